//! Tests of manifest parsing and validation: every bad case names its file and position.

use std::fs;
use std::path::Path;

use super::*;

const TD: &str = r#"{
  "family": "web",
  "networkMode": "awsvpc",
  "containerDefinitions": [{"name": "web", "image": "repo/web:v1", "portMappings": [{"containerPort": 8080}]}]
}"#;

/// Writes `manifest` (and a task definition file next to it) into a fresh directory.
fn write(manifest: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join("td.json"), TD).expect("write td");
    let path = dir.path().join("manifest.yaml");
    fs::write(&path, manifest).expect("write manifest");
    (dir, path)
}

fn problems(manifest: &str) -> Vec<Problem> {
    let (_dir, path) = write(manifest);
    match load(&path) {
        Ok(m) => panic!("expected problems, got a valid manifest: {m:#?}"),
        Err(invalid) => invalid.problems,
    }
}

fn one_service(body: &str) -> String {
    format!("apiVersion: ecs-reconciler/v1\nclusters:\n  c:\n    services:\n      s:\n{body}")
}

#[test]
fn the_filot_example_is_valid_and_reads_its_task_definitions() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/filot/filot.yaml");
    let m = load(&path).expect("the FiLot example is valid");
    let (_, _, gpu) = m
        .services()
        .find(|(_, s, _)| *s == "filot-ocr-gpu-service")
        .expect("gpu service");
    let TaskDefinitionSource::File { spec, .. } = &gpu.task_definition else {
        panic!("file source")
    };
    assert_eq!(spec.gpus(), 1);
    assert_eq!(gpu.rollout.timeout, Duration::from_secs(900));
    let asg = &m.clusters["filot-ocr-gpu-cluster"].auto_scaling_groups["filot-ocr-gpu-asg"];
    assert_eq!(
        (asg.min_size, asg.max_size, asg.desired_capacity),
        (Some(1), Some(4), Some(1))
    );
}

#[test]
fn the_minimal_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/minimal/minimal.yaml");
    let m = load(&path).expect("the minimal example is valid");
    assert_eq!(m.services().count(), 1);
}

#[test]
fn the_committed_schema_equals_the_generated_one() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/ecs-reconciler-v1.schema.json");
    let committed = fs::read_to_string(&path).expect("schema file is committed");
    assert_eq!(
        committed,
        schema_json(),
        "run `ecs-reconciler schema > manifests/ecs-reconciler-v1.schema.json`"
    );
}

#[test]
fn an_unknown_field_is_reported_with_its_line() {
    let p = problems(&one_service(
        "        desiredCount: 1\n        taskDefinition: {file: td.json}\n        replicas: 3\n",
    ));
    assert_eq!(p.len(), 1);
    assert!(p[0].message.contains("replicas"), "{}", p[0]);
    assert_eq!(p[0].line, Some(8), "{}", p[0]);
}

#[test]
fn a_wrong_type_is_reported_with_its_line() {
    let p = problems(&one_service(
        "        desiredCount: three\n        taskDefinition: {file: td.json}\n",
    ));
    assert_eq!(p[0].line, Some(6), "{}", p[0]);
}

#[test]
fn a_negative_count_names_the_field_path_and_position() {
    let p = problems(&one_service(
        "        desiredCount: -1\n        taskDefinition: {file: td.json}\n",
    ));
    assert_eq!(p.len(), 1);
    assert_eq!(
        p[0].path.as_deref(),
        Some("clusters.c.services.s.desiredCount")
    );
    assert_eq!((p[0].line, p[0].column), (Some(6), Some(23)));
    assert!(p[0].to_string().contains("manifest.yaml:6:23"), "{}", p[0]);
}

#[test]
fn asg_bounds_are_checked_and_every_problem_is_reported() {
    let text = "apiVersion: ecs-reconciler/v1\nclusters:\n  c:\n    autoScalingGroups:\n      \
                a: {minSize: 3, maxSize: 2}\n      b: {minSize: 1, maxSize: 4, desiredCapacity: 9}\n";
    let p = problems(text);
    assert_eq!(p.len(), 2, "{p:#?}");
    assert!(p[0].message.contains("minSize 3 is above maxSize 2"));
    assert!(p[1].message.contains("above maxSize 4"));
    assert_eq!(p[1].line, Some(6));
}

#[test]
fn an_image_without_tag_or_digest_is_refused() {
    let p = problems(&one_service(
        "        taskDefinition: {file: td.json}\n        images:\n          web: registry:5000/team/web\n",
    ));
    assert_eq!(p.len(), 1);
    assert!(p[0].message.contains("no tag or digest"), "{}", p[0]);
    assert_eq!(p[0].line, Some(8));
}

#[test]
fn images_with_a_tag_or_digest_are_accepted() {
    for image in [
        "repo/web:v1",
        "registry:5000/web:1.2",
        "repo/web@sha256:abc123",
    ] {
        assert!(check_image(image).is_ok(), "{image}");
    }
    assert!(check_image("repo/web@sha256").is_err());
}

#[test]
fn an_image_for_a_container_the_task_definition_lacks_is_refused() {
    let p = problems(&one_service(
        "        taskDefinition: {file: td.json}\n        images:\n          worker: repo/w:v1\n",
    ));
    assert!(
        p[0].message.contains("no container named \"worker\""),
        "{}",
        p[0]
    );
}

#[test]
fn both_or_neither_of_family_and_file_is_refused() {
    let both = problems(&one_service(
        "        taskDefinition: {family: web, file: td.json}\n",
    ));
    assert!(both[0].message.contains("not both"));
    let neither = problems(&one_service("        taskDefinition: {}\n"));
    assert!(neither[0].message.contains("set one of family or file"));
    assert_eq!(neither[0].line, Some(6));
}

#[test]
fn a_missing_task_definition_file_is_refused() {
    let p = problems(&one_service("        taskDefinition: {file: nope.json}\n"));
    assert!(
        p[0].message.contains("cannot read task definition file"),
        "{}",
        p[0]
    );
}

#[test]
fn a_broken_task_definition_file_names_its_own_line() {
    let (dir, path) = write(&one_service("        taskDefinition: {file: bad.json}\n"));
    fs::write(
        dir.path().join("bad.json"),
        "{\n  \"family\": \"x\",\n  \"containerDefinitions\": [],\n  \"memroy\": \"1\"\n}",
    )
    .expect("write");
    let p = load(&path).expect_err("invalid").problems;
    assert!(p[0].file.ends_with("bad.json"));
    assert_eq!(p[0].line, Some(4));
    assert!(p[0].message.contains("memroy"));
}

#[test]
fn duplicate_keys_are_refused() {
    let p = problems(&one_service("        desiredCount: 1\n        desiredCount: 2\n        taskDefinition: {file: td.json}\n"));
    assert!(
        p[0].message.to_lowercase().contains("duplicate"),
        "{}",
        p[0]
    );
    assert_eq!(p[0].line, Some(7));
}

#[test]
fn an_unknown_api_version_is_refused() {
    let p = problems("apiVersion: ecs-reconciler/v9\n");
    assert!(p[0].message.contains("unknown apiVersion"));
    assert_eq!(p[0].line, Some(1));
}

#[test]
fn a_bad_timeout_is_refused() {
    let p = problems(&one_service(
        "        taskDefinition: {file: td.json}\n        rollout: {timeout: soon}\n",
    ));
    assert_eq!(
        p[0].path.as_deref(),
        Some("clusters.c.services.s.rollout.timeout")
    );
}

#[test]
fn an_alias_bomb_fails_fast() {
    let mut text =
        String::from("apiVersion: ecs-reconciler/v1\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let prev = i - 1;
        text.push_str(&format!("a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"));
    }
    #[allow(clippy::disallowed_methods)] // failing fast is about wall-clock time
    let started = std::time::Instant::now();
    let p = problems(&text);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(p.len(), 1, "{p:#?}");
}

#[test]
fn very_deep_nesting_fails_fast() {
    let text = format!(
        "apiVersion: ecs-reconciler/v1\nclusters: {}{}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let p = problems(&text);
    assert_eq!(p.len(), 1);
}

#[test]
fn a_huge_file_is_refused_before_parsing() {
    let text = format!(
        "apiVersion: ecs-reconciler/v1\n# {}\n",
        "x".repeat(MAX_MANIFEST_BYTES)
    );
    let p = problems(&text);
    assert!(p[0].message.contains("bytes"), "{}", p[0]);
}

#[test]
fn a_service_without_desired_count_leaves_the_count_unmanaged() {
    let (_dir, path) = write(&one_service("        taskDefinition: {file: td.json}\n"));
    let m = load(&path).expect("valid");
    let (_, _, s) = m.services().next().expect("one service");
    assert_eq!(s.desired_count, None);
    assert!(s.rollout.rollback);
}

#[test]
fn the_fingerprint_changes_with_the_desired_state_only() {
    let (_d1, p1) = write(&one_service(
        "        desiredCount: 1\n        taskDefinition: {file: td.json}\n",
    ));
    let (_d2, p2) = write(&one_service(
        "        desiredCount: 2\n        taskDefinition: {file: td.json}\n",
    ));
    let (_d3, p3) = write(&one_service(
        "        desiredCount: 1\n        taskDefinition: {file: td.json}\n",
    ));
    let fp = |p: &Path| {
        load(p)
            .expect("valid")
            .services()
            .next()
            .expect("one")
            .2
            .fingerprint()
    };
    assert_ne!(fp(&p1), fp(&p2));
    assert_eq!(
        fp(&p1),
        fp(&p3),
        "the same content in another directory is the same state"
    );
}
