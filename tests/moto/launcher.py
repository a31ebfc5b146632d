"""Runs moto's server in this process and moves ECS deployments along as ECS would.

moto alone never progresses a deployment: rolloutState stays IN_PROGRESS, UpdateService makes no
new deployment and events stay empty, so a controller can never see a rollout become stable.
This launcher serves moto's WSGI app on a loopback port and, after every request and every
--tick seconds on a thread of its own, edits moto's ECS backend objects the way ECS would:

- a service whose taskDefinition differs from its PRIMARY deployment's gets a new PRIMARY
  deployment (IN_PROGRESS, 0 running) and the old PRIMARY becomes ACTIVE;
- a service whose desiredCount differs from its PRIMARY deployment's is scaled in place;
- --rollout-seconds after that, the PRIMARY deployment completes: it is the only deployment,
  runningCount = desiredCount, rolloutState COMPLETED, and an event says the service reached a
  steady state;
- fault: if an image of the deployment's task definition contains --fail-image (e.g. "broken"),
  the deployment fails instead (FAILED, failedTasks 3, 0 running) and, as the ECS deployment
  circuit breaker does with rollback on, the previous deployment becomes PRIMARY again and the
  service's taskDefinition reverts to it; that rollback completes --rollout-seconds later.

moto serves each request on its own thread with no lock of its own, so every request and every
step of the advancing thread hold one lock: moto's objects are never seen half edited.

Prints "ready <port>" on stdout once listening (--port 0 picks a free port).

moto internals touched (moto 5.2): moto.ecs.models.ecs_backends[account][region], its
.services ({"cluster:name": Service}) and .describe_task_definition(str); per Service:
.status, .name, .task_definition (ARN as given to Create/UpdateService), .desired_count,
.running_count, .pending_count, .deployments (list of dicts with camelCase keys, as
DescribeServices returns them), .events (list of dicts: id, createdAt, message) and
.deployment_controller; per TaskDefinition: .arn and .container_definitions (list of dicts).
"""

import argparse
import os
import sys
import threading
import time
import traceback
import uuid

from moto.core.utils import utcnow
from moto.ecs.models import ecs_backends
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

# One lock for moto's state: held by each request and by each step of the advancer.
STATE_LOCK = threading.Lock()


class Serialised:
    """WSGI middleware that runs each request, body included, under STATE_LOCK, and then one
    advancer step, so that an UpdateService has its new deployment before anyone can read the
    service (in ECS the UpdateService response already shows it)."""

    def __init__(self, app, advancer):
        self.app = app
        self.advancer = advancer

    def __call__(self, environ, start_response):
        with STATE_LOCK:
            result = self.app(environ, start_response)
            try:
                # The body may be produced lazily; produce it while moto's state holds still.
                body = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            self.advancer.step_logged()
        return [body]


class Advancer:
    """Moves ECS deployments along; see the module docstring for the rules."""

    def __init__(self, rollout_seconds, fail_image):
        self.rollout_seconds = rollout_seconds
        self.fail_image = fail_image
        # Deployment ID -> monotonic time its current change started.
        self.started = {}

    def run(self, tick):
        while True:
            time.sleep(tick)
            with STATE_LOCK:
                self.step_logged()

    def step_logged(self):
        """One step; the caller holds STATE_LOCK. A failure is logged, not raised."""
        try:
            self.step()
        except Exception:  # noqa: BLE001 - keep advancing; the log shows what broke
            traceback.print_exc()
            sys.stderr.flush()

    def step(self):
        now = time.monotonic()
        for account in list(ecs_backends.values()):
            for backend in list(account.values()):
                for service in list(backend.services.values()):
                    if service.status == "ACTIVE" and service.deployments:
                        self.advance(backend, service, now)

    def advance(self, backend, service, now):
        primary = next((d for d in service.deployments if d["status"] == "PRIMARY"), None)
        if primary is None:
            return
        try:
            # UpdateService stores what the client sent (family, family:revision or ARN); ECS
            # answers with the ARN.
            wanted = backend.describe_task_definition(service.task_definition).arn
        except Exception:  # noqa: BLE001 - an unknown revision is moto's to refuse, not ours
            return
        service.task_definition = wanted

        if primary["taskDefinition"] != wanted:
            primary["status"] = "ACTIVE"
            primary["updatedAt"] = utcnow()
            primary = self.new_deployment(service, wanted, primary)
            service.deployments.insert(0, primary)
            self.started[primary["id"]] = now
            self.event(
                service, f"(service {service.name}) has started {service.desired_count} tasks."
            )
        elif primary["desiredCount"] != service.desired_count:
            primary["desiredCount"] = service.desired_count
            primary["pendingCount"] = max(service.desired_count - primary["runningCount"], 0)
            primary["updatedAt"] = utcnow()
            self.started[primary["id"]] = now
        elif primary["rolloutState"] == "IN_PROGRESS" or (
            primary["rolloutState"] == "COMPLETED"
            and primary["runningCount"] != primary["desiredCount"]
        ):
            # moto creates services with a deployment that never completes.
            self.started.setdefault(primary["id"], now)

        self.sync_counts(service)
        began = self.started.get(primary["id"])
        if began is None or now - began < self.rollout_seconds:
            return
        del self.started[primary["id"]]
        if self.is_broken(backend, primary["taskDefinition"]):
            self.fail(service, primary, now)
        else:
            self.complete(service, primary)
        self.sync_counts(service)

    def new_deployment(self, service, task_definition, template):
        deployment_id = f"ecs-svc/{uuid.uuid4().int % 10**19}"
        now = utcnow()
        deployment = dict(template)
        deployment.update(
            {
                "id": deployment_id,
                "status": "PRIMARY",
                "taskDefinition": task_definition,
                "desiredCount": service.desired_count,
                "runningCount": 0,
                "pendingCount": service.desired_count,
                "failedTasks": 0,
                "rolloutState": "IN_PROGRESS",
                "rolloutStateReason": f"ECS deployment {deployment_id} in progress.",
                "createdAt": now,
                "updatedAt": now,
            }
        )
        return deployment

    def complete(self, service, primary):
        primary.update(
            {
                "runningCount": primary["desiredCount"],
                "pendingCount": 0,
                "rolloutState": "COMPLETED",
                "rolloutStateReason": f"ECS deployment {primary['id']} completed.",
                "updatedAt": utcnow(),
            }
        )
        # The old tasks have drained: only the PRIMARY deployment is left.
        service.deployments[:] = [primary]
        self.event(service, f"(service {service.name}) has reached a steady state.")

    def fail(self, service, failed, now):
        failed.update(
            {
                "status": "ACTIVE",
                "runningCount": 0,
                "pendingCount": 0,
                "failedTasks": max(failed.get("failedTasks") or 0, 3),
                "rolloutState": "FAILED",
                "rolloutStateReason": "ECS deployment circuit breaker: tasks failed to start.",
                "updatedAt": utcnow(),
            }
        )
        self.event(
            service,
            f"(service {service.name}) (deployment {failed['id']}) deployment failed: "
            "tasks failed to start.",
        )
        previous = next((d for d in service.deployments if d is not failed), None)
        if previous is None:
            # Nothing to roll back to: the failed deployment stays the service's PRIMARY.
            failed["status"] = "PRIMARY"
            return
        # The circuit breaker rolls back to the previous deployment's task definition.
        previous.update(
            {
                "status": "PRIMARY",
                "desiredCount": service.desired_count,
                "rolloutState": "IN_PROGRESS",
                "rolloutStateReason": f"ECS deployment {previous['id']} in progress.",
                "updatedAt": utcnow(),
            }
        )
        service.deployments[:] = [previous, failed]
        service.task_definition = previous["taskDefinition"]
        self.started[previous["id"]] = now
        self.event(
            service,
            f"(service {service.name}) rolling back to deployment {previous['id']}.",
        )

    def is_broken(self, backend, task_definition):
        if not self.fail_image:
            return False
        td = backend.describe_task_definition(task_definition)
        return any(self.fail_image in (c.get("image") or "") for c in td.container_definitions)

    @staticmethod
    def sync_counts(service):
        service.running_count = sum(d["runningCount"] or 0 for d in service.deployments)
        service.pending_count = sum(d["pendingCount"] or 0 for d in service.deployments)

    @staticmethod
    def event(service, message):
        # DescribeServices lists events newest first.
        entry = {"id": str(uuid.uuid4()), "createdAt": utcnow(), "message": message}
        service.events.insert(0, entry)
        del service.events[100:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--tick", type=float, default=0.5, help="seconds between advances")
    parser.add_argument(
        "--rollout-seconds",
        type=float,
        default=1.5,
        help="seconds a deployment takes to complete or fail",
    )
    parser.add_argument(
        "--fail-image",
        default="",
        help="deployments of a task definition with an image containing this fail",
    )
    args = parser.parse_args()

    advancer = Advancer(args.rollout_seconds, args.fail_image)
    app = Serialised(DomainDispatcherApplication(create_backend_app), advancer)
    server = make_server(args.host, args.port, app, threaded=True)
    port = server.server_address[1]
    # moto builds some URLs from MOTO_PORT, as moto_server sets it.
    os.environ.setdefault("MOTO_PORT", str(port))

    threading.Thread(target=advancer.run, args=(args.tick,), daemon=True).start()

    print(f"ready {port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
