//! The controller loop.
