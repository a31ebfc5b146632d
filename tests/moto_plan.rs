//! The built `ecs-reconciler plan` against a real `moto_server` over HTTP, seeded with the
//! runbook's FiLot topology: exit codes, the JSON plan, the text plan and the AWS calls it took.

// These tests wait on real child processes (moto, the daemon), in wall-clock time.
#![allow(clippy::disallowed_methods)]

#[path = "support/moto.rs"]
mod moto;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use moto::{
    Moto, Seeded, BACKEND_CLUSTER, BACKEND_FAMILY, BACKEND_SERVICE, GPU_ASG, GPU_CLUSTER,
    GPU_SERVICE,
};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_ecs-reconciler");

/// Far above what a plan against a local server takes (a second or two), far below a hang.
const PLAN_LIMIT: Duration = Duration::from_secs(90);

const BACKEND_CONTAINER: &str = "filot-backend";
const GPU_CONTAINER: &str = "ocr-worker";
const BACKEND_KEY: &str = "filot-backend-cluster/filot-backend-service";
const GPU_KEY: &str = "filot-ocr-gpu-cluster/filot-ocr-gpu-service";
const BACKEND_IMAGE_FIELD: &str = "taskDefinition.containerDefinitions[filot-backend].image";

// ---------------------------------------------------------------------------------------------
// The runbook's topology and manifests that describe it

/// A RegisterTaskDefinition document from `examples/filot/task-definitions`.
fn example_task_definition(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/filot/task-definitions")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn backend_td() -> Value {
    example_task_definition(BACKEND_FAMILY)
}

fn gpu_td() -> Value {
    example_task_definition(moto::GPU_FAMILY)
}

/// The image the task definition document gives its only container.
fn image_of(td: &Value) -> String {
    td["containerDefinitions"][0]["image"]
        .as_str()
        .expect("the example task definition names an image")
        .to_string()
}

/// The same image with another tag.
fn retagged(image: &str, tag: &str) -> String {
    let (repository, _) = image.rsplit_once(':').expect("example images carry a tag");
    format!("{repository}:{tag}")
}

/// The harness's FiLot topology, but running the runbook's own task definitions (the files in
/// `examples/filot`), so the manifest can name them as they are.
fn runbook_topology() -> Value {
    let mut topology = moto::filot_topology();
    topology["task_definitions"] = json!([backend_td(), gpu_td()]);
    let backend = topology["services"]
        .as_array_mut()
        .expect("the topology has a services list")
        .iter_mut()
        .find(|s| s["name"] == BACKEND_SERVICE)
        .expect("the topology has the backend service");
    backend["container_name"] = json!(BACKEND_CONTAINER);
    topology
}

fn start(topology: &Value) -> (Moto, Seeded) {
    let moto = Moto::start();
    let seeded = moto.seed(topology);
    (moto, seeded)
}

/// The manifest that matches [`runbook_topology`] exactly, as a JSON value for tests to edit.
fn in_sync_manifest() -> Value {
    json!({
        "apiVersion": "ecs-reconciler/v1",
        "region": moto::REGION,
        "clusters": {
            BACKEND_CLUSTER: {
                "services": {
                    BACKEND_SERVICE: {
                        "desiredCount": 3,
                        "taskDefinition": {"file": "task-definitions/filot-backend-task.json"},
                        "images": {BACKEND_CONTAINER: image_of(&backend_td())},
                        "targetGroups": [moto::BACKEND_TG],
                        "rollout": {"timeout": "10m", "rollback": true}
                    }
                }
            },
            GPU_CLUSTER: {
                "autoScalingGroups": {
                    GPU_ASG: {"minSize": 1, "maxSize": 4, "desiredCapacity": 1}
                },
                "services": {
                    GPU_SERVICE: {
                        "desiredCount": 1,
                        "taskDefinition": {"file": "task-definitions/filot-ocr-gpu-worker.json"},
                        "images": {GPU_CONTAINER: image_of(&gpu_td())},
                        "rollout": {"timeout": "15m"}
                    }
                }
            }
        }
    })
}

fn backend_service(manifest: &mut Value) -> &mut Value {
    &mut manifest["clusters"][BACKEND_CLUSTER]["services"][BACKEND_SERVICE]
}

/// A manifest and the task definition files it names, in a directory of its own.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    /// Writes `manifest` as block YAML next to copies of the example task definitions.
    fn new(manifest: &Value) -> Workspace {
        let dir = tempfile::tempdir().expect("a temporary directory for the manifest");
        let tds = dir.path().join("task-definitions");
        std::fs::create_dir(&tds).expect("room for the task definition files");
        for name in [BACKEND_FAMILY, moto::GPU_FAMILY] {
            let text = serde_json::to_string_pretty(&example_task_definition(name))
                .expect("a JSON value serialises");
            std::fs::write(tds.join(format!("{name}.json")), text)
                .expect("the task definition file is written");
        }
        let ws = Workspace { dir };
        ws.write("filot.yaml", &to_yaml(manifest));
        ws
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("the file is written");
        path
    }

    fn manifest(&self) -> PathBuf {
        self.dir.path().join("filot.yaml")
    }
}

/// Block-style YAML for a JSON value; strings are double-quoted, which YAML reads as JSON does.
fn to_yaml(value: &Value) -> String {
    fn scalar(v: &Value) -> String {
        v.to_string()
    }
    fn block(v: &Value, indent: usize, out: &mut String) {
        let pad = " ".repeat(indent);
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match v {
                        Value::Object(m) if !m.is_empty() => {
                            out.push_str(&format!("{pad}{k}:\n"));
                            block(v, indent + 2, out);
                        }
                        Value::Array(a) if !a.is_empty() => {
                            out.push_str(&format!("{pad}{k}:\n"));
                            block(v, indent + 2, out);
                        }
                        Value::Object(_) => out.push_str(&format!("{pad}{k}: {{}}\n")),
                        Value::Array(_) => out.push_str(&format!("{pad}{k}: []\n")),
                        _ => out.push_str(&format!("{pad}{k}: {}\n", scalar(v))),
                    }
                }
            }
            Value::Array(items) => {
                for item in items {
                    out.push_str(&format!("{pad}- {}\n", scalar(item)));
                }
            }
            _ => out.push_str(&format!("{pad}{}\n", scalar(v))),
        }
    }
    let mut out = String::new();
    block(value, 0, &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// Running the binary

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "plan --output json printed something other than JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs the binary with `args`, its output piped, and kills it after [`PLAN_LIMIT`].
fn run(args: &[&str], configure: impl FnOnce(&mut Command), moto: Option<&Moto>) -> Run {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("ECS_RECONCILER_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    configure(&mut command);
    let started = Instant::now();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("failed to run {BIN}: {e}"));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = loop {
        match child
            .try_wait()
            .expect("the child process can be waited for")
        {
            Some(status) => break status,
            None if started.elapsed() > PLAN_LIMIT => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`ecs-reconciler {}` did not finish within {PLAN_LIMIT:?}: the AWS timeouts \
                     are probably not applied, or moto_server stopped answering. moto log:\n{}",
                    args.join(" "),
                    moto.map(Moto::log_tail).unwrap_or_default()
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    Run {
        code: status
            .code()
            .expect("the plan exits rather than being killed"),
        stdout: stdout.join().expect("the stdout reader finishes"),
        stderr: stderr.join().expect("the stderr reader finishes"),
        elapsed: started.elapsed(),
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut out = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut out);
        }
        out
    })
}

/// `plan -f <manifest> --output json` against `moto`.
fn plan_json(moto: &Moto, manifest: &Path) -> (Run, Value) {
    let path = manifest.to_str().expect("temporary paths are UTF-8");
    let out = run(
        &["plan", "-f", path, "--output", "json"],
        |c| moto.configure(c),
        Some(moto),
    );
    let plan = out.json();
    (out, plan)
}

// ---------------------------------------------------------------------------------------------
// Reading the plan

/// `plan --output json` against a loopback port that is not moto, with test credentials.
fn plan_against_port(port: u16, manifest: &Path) -> Run {
    run(
        &[
            "plan",
            "-f",
            manifest.to_str().expect("UTF-8 path"),
            "--output",
            "json",
        ],
        |c| {
            for var in ["AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"] {
                c.env_remove(var);
            }
            c.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
                .env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing")
                .env("AWS_REGION", moto::REGION)
                .env("AWS_EC2_METADATA_DISABLED", "true");
        },
        None,
    )
}

fn resource<'a>(plan: &'a Value, name: &str) -> &'a Value {
    plan["resources"]
        .as_array()
        .expect("the plan has a resources list")
        .iter()
        .find(|r| r["resource"] == name)
        .unwrap_or_else(|| panic!("the plan has no resource {name}:\n{plan:#}"))
}

fn statuses(plan: &Value) -> Vec<(String, String)> {
    plan["resources"]
        .as_array()
        .expect("the plan has a resources list")
        .iter()
        .map(|r| {
            (
                r["resource"].as_str().unwrap_or_default().to_string(),
                r["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The changes of one resource as (field, desired, observed).
fn changes(resource: &Value) -> Vec<(String, Value, Value)> {
    resource["changes"]
        .as_array()
        .expect("a resource has a changes list")
        .iter()
        .map(|c| {
            (
                c["field"].as_str().unwrap_or_default().to_string(),
                c["desired"].clone(),
                c["observed"].clone(),
            )
        })
        .collect()
}

fn calls(plan: &Value, operation: &str) -> u64 {
    plan["awsCalls"][operation].as_u64().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn a_service_deployed_from_exactly_this_manifest_plans_no_change() {
    let (moto, _) = start(&runbook_topology());
    let ws = Workspace::new(&in_sync_manifest());

    let (out, plan) = plan_json(&moto, &ws.manifest());

    assert_eq!(
        out.code, 0,
        "in sync exits 0:\n{plan:#}\nstderr:\n{}",
        out.stderr
    );
    assert_eq!(plan["formatVersion"], 1);
    assert_eq!(plan["inSync"], true, "{plan:#}");
    assert_eq!(
        statuses(&plan),
        [
            (BACKEND_KEY.to_string(), "in_sync".to_string()),
            (GPU_KEY.to_string(), "in_sync".to_string()),
            (GPU_ASG.to_string(), "in_sync".to_string()),
        ],
        "services first, then groups, each in sync:\n{plan:#}"
    );
    for r in plan["resources"].as_array().expect("a resources list") {
        assert_eq!(r["changes"], json!([]), "{r:#}");
    }
    assert_eq!(resource(&plan, GPU_ASG)["kind"], "autoscaling_group");
    assert_eq!(resource(&plan, BACKEND_KEY)["kind"], "service");

    // One DescribeServices per cluster, one read of all groups, one read per running revision.
    assert_eq!(calls(&plan, "ecs:DescribeServices"), 2, "{plan:#}");
    assert_eq!(
        calls(&plan, "autoscaling:DescribeAutoScalingGroups"),
        1,
        "{plan:#}"
    );
    assert_eq!(calls(&plan, "ecs:DescribeTaskDefinition"), 2, "{plan:#}");
    let total: u64 = plan["awsCalls"]
        .as_object()
        .expect("awsCalls is an object")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(plan["awsCallsTotal"], total, "{plan:#}");
}

#[test]
fn an_image_change_is_exactly_one_change_and_reads_as_text_without_colour() {
    let (moto, _) = start(&runbook_topology());
    let old = image_of(&backend_td());
    let new = retagged(&old, "v1.4.2");
    let mut manifest = in_sync_manifest();
    backend_service(&mut manifest)["images"][BACKEND_CONTAINER] = json!(new);
    let ws = Workspace::new(&manifest);

    let (out, plan) = plan_json(&moto, &ws.manifest());

    assert_eq!(
        out.code, 2,
        "changes pending exits 2:\n{plan:#}\nstderr:\n{}",
        out.stderr
    );
    assert_eq!(plan["inSync"], false);
    let backend = resource(&plan, BACKEND_KEY);
    assert_eq!(backend["status"], "drifted");
    assert_eq!(
        changes(backend),
        [(BACKEND_IMAGE_FIELD.to_string(), json!(new), json!(old))],
        "{plan:#}"
    );
    assert_eq!(resource(&plan, GPU_KEY)["status"], "in_sync", "{plan:#}");
    assert_eq!(resource(&plan, GPU_ASG)["status"], "in_sync", "{plan:#}");

    // The same plan for a person, on a pipe: grouped by resource, no colour codes.
    let path = ws.manifest();
    let text = run(
        &["plan", "-f", path.to_str().expect("UTF-8 path")],
        |c| moto.configure(c),
        Some(&moto),
    );
    assert_eq!(
        text.code, 2,
        "stdout:\n{}\nstderr:\n{}",
        text.stdout, text.stderr
    );
    assert!(
        !text.stdout.contains('\x1b'),
        "no ANSI escapes on a pipe:\n{:?}",
        text.stdout
    );
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!("~ service {BACKEND_KEY}").as_str(),
            format!("    {BACKEND_IMAGE_FIELD}: {old} -> {new}").as_str(),
            "3 resources: 2 in sync, 1 to change, 0 missing, 0 unreadable.",
        ],
        "the text plan:\n{}",
        text.stdout
    );
}

#[test]
fn a_count_change_is_reported_as_desired_count() {
    let (moto, _) = start(&runbook_topology());
    let mut manifest = in_sync_manifest();
    backend_service(&mut manifest)["desiredCount"] = json!(5);
    let ws = Workspace::new(&manifest);

    let (out, plan) = plan_json(&moto, &ws.manifest());

    assert_eq!(out.code, 2, "{plan:#}\nstderr:\n{}", out.stderr);
    assert_eq!(
        changes(resource(&plan, BACKEND_KEY)),
        [("desiredCount".to_string(), json!(5), json!(3))],
        "{plan:#}"
    );
    assert_eq!(resource(&plan, GPU_KEY)["status"], "in_sync", "{plan:#}");
}

#[test]
fn an_auto_scaling_group_capacity_change_is_reported_by_field() {
    let (moto, _) = start(&runbook_topology());
    let mut manifest = in_sync_manifest();
    manifest["clusters"][GPU_CLUSTER]["autoScalingGroups"][GPU_ASG] =
        json!({"minSize": 1, "maxSize": 6, "desiredCapacity": 2});
    let ws = Workspace::new(&manifest);

    let (out, plan) = plan_json(&moto, &ws.manifest());

    assert_eq!(out.code, 2, "{plan:#}\nstderr:\n{}", out.stderr);
    let group = resource(&plan, GPU_ASG);
    assert_eq!(group["kind"], "autoscaling_group");
    assert_eq!(group["status"], "drifted");
    let mut found = changes(group);
    found.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        found,
        [
            ("desiredCapacity".to_string(), json!(2), json!(1)),
            ("maxSize".to_string(), json!(6), json!(4)),
        ],
        "minSize is unchanged and not reported:\n{plan:#}"
    );
    assert_eq!(
        resource(&plan, BACKEND_KEY)["status"],
        "in_sync",
        "{plan:#}"
    );
    assert_eq!(resource(&plan, GPU_KEY)["status"], "in_sync", "{plan:#}");
}

#[test]
fn a_service_aws_lacks_is_missing_not_an_error() {
    let (moto, _) = start(&runbook_topology());
    let mut manifest = in_sync_manifest();
    let canary = backend_service(&mut manifest).clone();
    manifest["clusters"][BACKEND_CLUSTER]["services"]["filot-backend-canary"] = canary.clone();
    // A cluster that does not exist holds none of its services: missing as well.
    manifest["clusters"]["filot-staging-cluster"] = json!({"services": {"api": canary}});
    let ws = Workspace::new(&manifest);

    let (out, plan) = plan_json(&moto, &ws.manifest());

    assert_eq!(
        out.code, 2,
        "missing means changes pending:\n{plan:#}\nstderr:\n{}",
        out.stderr
    );
    for name in [
        "filot-backend-cluster/filot-backend-canary",
        "filot-staging-cluster/api",
    ] {
        let r = resource(&plan, name);
        assert_eq!(r["status"], "missing", "{plan:#}");
        assert_eq!(r["kind"], "service");
        assert!(r.get("error").is_none(), "{r:#}");
    }
    assert_eq!(
        resource(&plan, BACKEND_KEY)["status"],
        "in_sync",
        "{plan:#}"
    );
    assert_eq!(resource(&plan, GPU_KEY)["status"], "in_sync", "{plan:#}");
}

#[test]
fn a_cluster_of_25_services_is_read_in_3_describe_services_calls_and_each_revision_once() {
    // Two revisions of the backend family; the 25 services run one or the other.
    let mut topology = runbook_topology();
    let mut first = backend_td();
    first["containerDefinitions"][0]["image"] = json!(retagged(&image_of(&first), "v1.4.0"));
    topology["task_definitions"] = json!([first, backend_td(), gpu_td()]);
    let names: Vec<String> = (1..25).map(|i| format!("filot-worker-{i:02}")).collect();
    let services = topology["services"]
        .as_array_mut()
        .expect("the topology has a services list");
    for (i, name) in names.iter().enumerate() {
        let revision = if i % 3 == 0 { 1 } else { 2 };
        services.push(json!({
            "cluster": BACKEND_CLUSTER, "name": name,
            "task_definition": format!("{BACKEND_FAMILY}:{revision}"),
            "desired_count": 1, "launch_type": "FARGATE"
        }));
    }
    let (moto, seeded) = start(&topology);
    assert_eq!(
        seeded.task_definitions[BACKEND_FAMILY],
        format!(
            "arn:aws:ecs:{}:123456789012:task-definition/{BACKEND_FAMILY}:2",
            moto::REGION
        ),
        "the seed registered two revisions"
    );

    // Only the backend cluster, so every DescribeServices call is for its 25 services.
    let mut manifest = in_sync_manifest();
    let backend = backend_service(&mut manifest).clone();
    manifest["clusters"] = json!({BACKEND_CLUSTER: {"services": {BACKEND_SERVICE: backend}}});
    for name in &names {
        manifest["clusters"][BACKEND_CLUSTER]["services"][name] = json!({
            "taskDefinition": {"family": BACKEND_FAMILY},
        });
    }
    let ws = Workspace::new(&manifest);

    let (out, plan) = plan_json(&moto, &ws.manifest());

    assert_eq!(
        plan["resources"].as_array().map(Vec::len),
        Some(25),
        "{plan:#}\nstderr:\n{}",
        out.stderr
    );
    assert_eq!(
        calls(&plan, "ecs:DescribeServices"),
        3,
        "25 services are 3 batches of at most 10, not 25 calls: {:#}",
        plan["awsCalls"]
    );
    // Revisions :1 and :2 are the only distinct ARNs; the family's latest is :2 again.
    assert!(
        calls(&plan, "ecs:DescribeTaskDefinition") <= 2,
        "a revision is immutable and read at most once per plan: {:#}",
        plan["awsCalls"]
    );
    assert!(
        calls(&plan, "ecs:ListTaskDefinitions") <= 1,
        "the family's latest revision is asked once: {:#}",
        plan["awsCalls"]
    );
    // The services on :1 build on the family's latest (:2), whose image differs.
    assert_eq!(out.code, 2, "{plan:#}");
    for (i, name) in names.iter().enumerate() {
        let r = resource(&plan, &format!("{BACKEND_CLUSTER}/{name}"));
        let expected = if i % 3 == 0 { "drifted" } else { "in_sync" };
        assert_eq!(r["status"], expected, "{r:#}");
    }
}

#[test]
fn a_family_source_builds_on_the_latest_active_revision_not_the_running_one() {
    // Revision 1 is older (another image, one variable fewer); revision 2 is the example file.
    // The backend service was created from the family, so it runs revision 2; another service
    // still runs revision 1.
    let mut topology = runbook_topology();
    let mut first = backend_td();
    let old_image = retagged(&image_of(&first), "v1.4.0");
    first["containerDefinitions"][0]["image"] = json!(old_image);
    first["containerDefinitions"][0]["environment"]
        .as_array_mut()
        .expect("the example container has environment variables")
        .retain(|kv| kv["name"] != "OCR_QUEUE_KEY");
    topology["task_definitions"] = json!([first, backend_td(), gpu_td()]);
    let previous = "filot-backend-previous";
    topology["services"]
        .as_array_mut()
        .expect("the topology has a services list")
        .push(json!({
            "cluster": BACKEND_CLUSTER, "name": previous,
            "task_definition": format!("{BACKEND_FAMILY}:1"),
            "desired_count": 1, "launch_type": "FARGATE"
        }));
    let (moto, _) = start(&topology);

    let mut manifest = in_sync_manifest();
    let backend = backend_service(&mut manifest);
    backend["taskDefinition"] = json!({"family": BACKEND_FAMILY});
    let mut on_old = backend.clone();
    on_old["desiredCount"] = json!(1);
    manifest["clusters"][BACKEND_CLUSTER]["services"][previous] = on_old;
    let ws = Workspace::new(&manifest);

    let (out, plan) = plan_json(&moto, &ws.manifest());

    assert_eq!(
        resource(&plan, BACKEND_KEY)["status"],
        "in_sync",
        "the service runs the latest revision with the manifest's image:\n{plan:#}\nstderr:\n{}",
        out.stderr
    );
    assert_eq!(out.code, 2, "{plan:#}");
    let drifted = resource(&plan, &format!("{BACKEND_CLUSTER}/{previous}"));
    let mut found = changes(drifted);
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let fields: Vec<&str> = found.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(
        fields,
        [
            "taskDefinition.containerDefinitions[filot-backend].environment",
            BACKEND_IMAGE_FIELD,
        ],
        "revision 1 differs from the latest in a variable and the image:\n{plan:#}"
    );
    let (_, desired_env, observed_env) = &found[0];
    let names = |env: &Value| -> Vec<String> {
        env.as_array()
            .map(|kvs| {
                kvs.iter()
                    .filter_map(|kv| kv["name"].as_str())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        names(desired_env).contains(&"OCR_QUEUE_KEY".to_string()),
        "{desired_env}"
    );
    assert!(
        !names(observed_env).contains(&"OCR_QUEUE_KEY".to_string()),
        "{observed_env}"
    );
    assert_eq!(found[1].1, json!(image_of(&backend_td())));
    assert_eq!(found[1].2, json!(old_image));
    assert!(
        calls(&plan, "ecs:ListTaskDefinitions") >= 1,
        "the family's latest ACTIVE revision must be asked for, not assumed: {:#}",
        plan["awsCalls"]
    );
}

#[test]
fn an_unreachable_endpoint_fails_fast_with_exit_1_and_a_clear_error() {
    // A port that was free a moment ago: connections to it are refused.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port");
    let ws = Workspace::new(&in_sync_manifest());
    let path = ws.manifest();

    let out = plan_against_port(port, &path);

    assert!(
        out.elapsed < Duration::from_secs(60),
        "took {:?}: the connect timeout or the retry budget is not applied",
        out.elapsed
    );
    assert_eq!(
        out.code, 1,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    let plan = out.json();
    assert_eq!(plan["inSync"], false);
    for r in plan["resources"].as_array().expect("a resources list") {
        assert_eq!(r["status"], "error", "{r:#}");
        let error = r["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with("failed to call ") && error.contains("(transient)"),
            "the error names the call and why it failed: {error}"
        );
        assert!(
            error.to_lowercase().contains("connect") || error.contains("dispatch"),
            "the error says the endpoint could not be reached: {error}"
        );
    }
    assert_eq!(
        plan["resources"].as_array().map(Vec::len),
        Some(3),
        "{plan:#}"
    );
}

/// An endpoint that accepts connections and never answers: without explicit timeouts the SDK
/// would wait on it for minutes. The plan must give up within the operation timeout (30s).
#[test]
fn an_endpoint_that_never_answers_times_out_with_exit_1() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    let port = listener.local_addr().expect("its address").port();
    // Accept and hold every connection, reading nothing and writing nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let ws = Workspace::new(&in_sync_manifest());
    let path = ws.manifest();

    let out = plan_against_port(port, &path);

    assert!(
        out.elapsed < Duration::from_secs(60),
        "took {:?}: the attempt or operation timeout is not applied",
        out.elapsed
    );
    assert_eq!(
        out.code, 1,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    let plan = out.json();
    for r in plan["resources"].as_array().expect("a resources list") {
        assert_eq!(r["status"], "error", "{r:#}");
        let error = r["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("(transient)"),
            "a timeout is transient: {error}"
        );
        assert!(
            error.to_lowercase().contains("timeout") || error.to_lowercase().contains("timed out"),
            "{error}"
        );
    }
}

#[test]
fn validate_names_the_file_line_and_column_of_a_bad_manifest() {
    let ws = Workspace::new(&in_sync_manifest());
    let good = ws.manifest();
    let out = run(
        &["validate", "-f", good.to_str().expect("UTF-8 path")],
        |_| {},
        None,
    );
    assert_eq!(
        out.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    assert!(
        out.stdout
            .contains("valid (2 services, 1 auto scaling groups)"),
        "{}",
        out.stdout
    );

    // minSize above maxSize, on line 7; an unknown field on line 10.
    let bad = ws.write(
        "bad.yaml",
        "apiVersion: ecs-reconciler/v1\n\
         clusters:\n\
         \x20 filot-ocr-gpu-cluster:\n\
         \x20   autoScalingGroups:\n\
         \x20     filot-ocr-gpu-asg:\n\
         \x20       maxSize: 2\n\
         \x20       minSize: 3\n",
    );
    let out = run(
        &["validate", "-f", bad.to_str().expect("UTF-8 path")],
        |_| {},
        None,
    );
    assert_eq!(
        out.code, 1,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    let expected = format!(
        "{}:7:18: clusters.filot-ocr-gpu-cluster.autoScalingGroups.filot-ocr-gpu-asg.minSize: \
         minSize 3 is above maxSize 2",
        bad.display()
    );
    assert!(
        out.stderr.contains(&expected),
        "expected {expected:?} in:\n{}",
        out.stderr
    );

    let typo = ws.write(
        "typo.yaml",
        "apiVersion: ecs-reconciler/v1\n\
         clusters:\n\
         \x20 filot-backend-cluster:\n\
         \x20   services:\n\
         \x20     filot-backend-service:\n\
         \x20       desiredCount: 3\n\
         \x20       taskDefinition: {family: filot-backend-task}\n\
         \x20       desiredCuont: 4\n",
    );
    let out = run(
        &["validate", "-f", typo.to_str().expect("UTF-8 path")],
        |_| {},
        None,
    );
    assert_eq!(
        out.code, 1,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    let at = format!("{}:8:9: ", typo.display());
    assert!(
        out.stderr.contains(&at) && out.stderr.contains("desiredCuont"),
        "expected the unknown field at {at:?} in:\n{}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// Contract: the simulator and moto answer the same observe-and-plan sequence alike

/// The same manifests planned against moto and against the simulator seeded from the in-sync
/// manifest give the same resources, statuses and changes (call counts aside), for what moto
/// models: in sync, an image change, a count change, a group capacity change, a missing service.
#[test]
fn the_simulator_and_moto_plan_the_same_changes() {
    use ecs_reconciler::observe::Observer;
    use ecs_reconciler::plan::Plan;
    use ecs_reconciler::sim::{SimCloud, SimConfig};
    use std::sync::Arc;

    let (moto, _) = start(&runbook_topology());
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let in_sync = Workspace::new(&in_sync_manifest());
    let base =
        ecs_reconciler::manifest::load(&in_sync.manifest()).expect("the in-sync manifest is valid");
    let config = SimConfig {
        region: moto::REGION.into(),
        ..SimConfig::default()
    };
    let sim = Arc::new(SimCloud::with_manifest(config, &base, false));
    let aws = Arc::new(runtime.block_on(moto.cloud()));

    let mut variants = vec![("in sync", in_sync_manifest())];
    let mut image = in_sync_manifest();
    backend_service(&mut image)["images"][BACKEND_CONTAINER] =
        json!(retagged(&image_of(&backend_td()), "v9.9.9"));
    variants.push(("image change", image));
    let mut count = in_sync_manifest();
    backend_service(&mut count)["desiredCount"] = json!(5);
    variants.push(("count change", count));
    let mut group = in_sync_manifest();
    group["clusters"][GPU_CLUSTER]["autoScalingGroups"][GPU_ASG] =
        json!({"minSize": 1, "maxSize": 6, "desiredCapacity": 2});
    variants.push(("group capacity change", group));
    let mut missing = in_sync_manifest();
    missing["clusters"][BACKEND_CLUSTER]["services"]["filot-extra-service"] = json!({
        "desiredCount": 1,
        "taskDefinition": {"file": "task-definitions/filot-backend-task.json"}
    });
    variants.push(("missing service", missing));

    for (name, manifest) in variants {
        let ws = Workspace::new(&manifest);
        let manifest = ecs_reconciler::manifest::load(&ws.manifest()).expect("variant is valid");
        let plan_on = |cloud: Arc<dyn ecs_reconciler::cloud::Cloud>| {
            let snapshot = runtime.block_on(Observer::new(cloud).observe(&manifest));
            let plan = Plan::new(&manifest, &snapshot, Default::default());
            serde_json::to_value(&plan.resources).expect("resources serialise")
        };
        let from_moto = plan_on(aws.clone());
        let from_sim = plan_on(sim.clone());
        assert_eq!(
            from_sim, from_moto,
            "{name}: the simulator and moto disagree"
        );
        let expect_sync = name == "in sync";
        assert_eq!(
            from_moto
                .as_array()
                .expect("a list")
                .iter()
                .all(|r| r["status"] == "in_sync"),
            expect_sync,
            "{name}: {from_moto:#}"
        );
    }
}
