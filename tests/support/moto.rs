//! A `moto_server` child process for integration tests, and the FiLot topology to seed it with.

// These tests wait on real child processes (moto, the daemon), in wall-clock time.
#![allow(clippy::disallowed_methods)]
//
// Include it with `#[path = "support/moto.rs"] mod moto;`. Each `Moto` is its own server on its
// own port, so tests can run in parallel; the server is killed when the `Moto` drops.
// `MOTO_SERVER` and `PYTHON` override the moto server command and the `python3` executable.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ecs_reconciler::cloud::aws::AwsCloud;
use serde::Deserialize;
use serde_json::{json, Value};

pub const REGION: &str = "ap-southeast-2";
pub const BACKEND_CLUSTER: &str = "filot-backend-cluster";
pub const GPU_CLUSTER: &str = "filot-ocr-gpu-cluster";
pub const BACKEND_SERVICE: &str = "filot-backend-service";
pub const GPU_SERVICE: &str = "filot-ocr-gpu-service";
pub const BACKEND_FAMILY: &str = "filot-backend-task";
pub const GPU_FAMILY: &str = "filot-ocr-gpu-worker";
pub const GPU_ASG: &str = "filot-ocr-gpu-asg";
pub const BACKEND_TG: &str = "filot-backend-tg";

const ECR: &str = "123456789012.dkr.ecr.ap-southeast-2.amazonaws.com";

const START_TIMEOUT: Duration = Duration::from_secs(30);
const SEED_TIMEOUT: Duration = Duration::from_secs(60);
/// Importing moto takes a few seconds, more on a loaded machine.
const LAUNCHER_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `moto_server`; killed on drop.
pub struct Moto {
    child: Child,
    endpoint: String,
    log: tempfile::NamedTempFile,
}

/// What `tests/moto/seed.py` created.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Seeded {
    pub vpc_id: String,
    pub subnet_ids: Vec<String>,
    /// Family to the ARN of its latest registered revision.
    pub task_definitions: BTreeMap<String, String>,
    pub target_groups: BTreeMap<String, String>,
    /// `cluster/service` to service ARN.
    pub services: BTreeMap<String, String>,
    /// Group name to the IDs of its instances.
    pub auto_scaling_groups: BTreeMap<String, Vec<String>>,
    /// Cluster to the ARNs of its container instances.
    pub container_instances: BTreeMap<String, Vec<String>>,
}

impl Moto {
    /// Starts `moto_server` on a free loopback port and waits until it answers HTTP.
    pub fn start() -> Moto {
        // The port is free when we ask but could be taken before moto binds it; try again then.
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::try_start() {
                Ok(moto) => return moto,
                Err(e) => last_error = e,
            }
        }
        panic!("failed to start moto_server: {last_error}");
    }

    fn try_start() -> Result<Moto, String> {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().map_err(|e| format!("temp log file: {e}"))?;
        let stdout = log.reopen().map_err(|e| format!("temp log file: {e}"))?;
        let stderr = log.reopen().map_err(|e| format!("temp log file: {e}"))?;
        // `python3 -m moto.server` rather than the `moto_server` script: a fresh pip install
        // under pyenv has no shim for the script until `pyenv rehash`.
        let mut command = match std::env::var("MOTO_SERVER") {
            Ok(program) => Command::new(program),
            Err(_) => {
                let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
                let mut c = Command::new(python);
                c.args(["-m", "moto.server"]);
                c
            }
        };
        let program = format!("{command:?}");
        let child = command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(credentials())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                format!("could not run {program} ({e}); pip install 'moto[server]==5.2.*'")
            })?;
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = moto.child.try_wait() {
                return Err(format!(
                    "{program} exited with {status}:\n{}",
                    moto.log_tail()
                ));
            }
            if answers_http(port) {
                return Ok(moto);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{program} did not answer on port {port} within {START_TIMEOUT:?}:\n{}",
                    moto.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts `tests/moto/launcher.py` instead of `moto_server`: moto's server in one process
    /// with a thread that moves ECS deployments along as ECS does (new deployment on a task
    /// definition change, COMPLETED after a second or two). A deployment of a task definition
    /// with an image containing `fail_image` (unless empty) fails, and the previous deployment
    /// becomes PRIMARY again, as ECS's circuit breaker with rollback does. The launcher picks
    /// its own port and says which, so there is no race for a free port.
    pub fn start_with_launcher(fail_image: &str) -> Moto {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/moto/launcher.py");
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let log = tempfile::NamedTempFile::new().expect("a temp file for the launcher's log");
        let stderr = log.reopen().expect("the launcher's log reopens");
        let mut child = Command::new(&python)
            .arg(&script)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(["--fail-image", fail_image])
            .envs(credentials())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "could not run {python} {} ({e}); pip install 'moto[server]==5.2.*'",
                    script.display()
                )
            });
        let stdout = child.stdout.take().expect("the launcher's stdout is piped");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = ready_tx.send(lines.next());
            // Keep the pipe drained so the launcher never blocks on a full one.
            for _ in lines {}
        });
        // From here on the launcher is killed on drop, even if it never gets ready.
        let mut moto = Moto {
            child,
            endpoint: String::new(),
            log,
        };
        let line = match ready_rx.recv_timeout(LAUNCHER_READY_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            Ok(_) => panic!(
                "launcher.py exited before it was ready (is moto installed for {python}?):\n{}",
                moto.log_tail()
            ),
            Err(_) => panic!(
                "launcher.py did not print \"ready\" within {LAUNCHER_READY_TIMEOUT:?}; \
                 importing moto is probably stuck or very slow:\n{}",
                moto.log_tail()
            ),
        };
        let port: u16 = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("launcher.py printed {line:?}, not \"ready <port>\""));
        moto.endpoint = format!("http://127.0.0.1:{port}");
        moto
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Where the server's output goes, for failure messages.
    pub fn log_path(&self) -> &Path {
        self.log.path()
    }

    /// The last lines the server logged.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The environment an `ecs-reconciler` process (or any AWS client) needs to use this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = credentials();
        env.push(("AWS_ENDPOINT_URL", self.endpoint.clone()));
        env
    }

    /// Applies [`Moto::env`] to a command and removes what could point it elsewhere.
    pub fn configure(&self, command: &mut Command) {
        for var in [
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE",
        ] {
            command.env_remove(var);
        }
        command.envs(self.env());
    }

    /// An adapter talking to this server, with the production timeouts and retries.
    pub async fn cloud(&self) -> AwsCloud {
        let config = AwsCloud::config_loader(Some(REGION.to_string()))
            .endpoint_url(&self.endpoint)
            .test_credentials()
            .load()
            .await;
        AwsCloud::new(&config)
    }

    /// Seeds the server by running `tests/moto/seed.py` with `topology` on its stdin.
    pub fn seed(&self, topology: &Value) -> Seeded {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/moto/seed.py");
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let mut command = Command::new(&python);
        command
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.configure(&mut command);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("failed to run {python} {}: {e}", script.display()));
        let input = topology.to_string();
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .expect("failed to write the topology to seed.py");
        }
        let deadline = Instant::now() + SEED_TIMEOUT;
        // Read stdout and stderr on threads so a chatty script cannot block on a full pipe.
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "seed.py did not finish within {SEED_TIMEOUT:?}; moto_server is probably \
                         stuck. Its log:\n{}",
                        self.log_tail()
                    );
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => panic!("failed to wait for seed.py: {e}"),
            }
        };
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        assert!(
            status.success(),
            "seed.py failed ({status}); is boto3 installed?\n{stderr}\nmoto_server log:\n{}",
            self.log_tail()
        );
        serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!("seed.py printed something other than JSON ({e}):\n{stdout}")
        })
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn credentials() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", REGION.into()),
        ("AWS_DEFAULT_REGION", REGION.into()),
        // Nothing should ever ask the instance metadata service in a test; asking costs seconds.
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("failed to find a free loopback port")
}

fn answers_http(port: u16) -> bool {
    let Ok(mut stream) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
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

/// The FiLot backend API: Fargate, awsvpc, behind `filot-backend-tg`.
pub fn backend_task_definition(image: &str) -> Value {
    json!({
        "family": BACKEND_FAMILY,
        "executionRoleArn": "arn:aws:iam::123456789012:role/ecsTaskExecutionRole",
        "networkMode": "awsvpc",
        "requiresCompatibilities": ["FARGATE"],
        "cpu": "512",
        "memory": "1024",
        "containerDefinitions": [{
            "name": "api",
            "image": image,
            "essential": true,
            "portMappings": [{"containerPort": 8080, "protocol": "tcp"}],
            "environment": [{"name": "APP_ENV", "value": "production"}],
            "healthCheck": {
                "command": ["CMD-SHELL", "curl -f http://localhost:8080/health || exit 1"],
                "interval": 30, "timeout": 5, "retries": 3
            }
        }]
    })
}

/// The FiLot OCR worker: EC2, one GPU, secrets, awslogs.
pub fn gpu_worker_task_definition(image: &str) -> Value {
    json!({
        "family": GPU_FAMILY,
        "taskRoleArn": "arn:aws:iam::123456789012:role/filot-ocr-task",
        "executionRoleArn": "arn:aws:iam::123456789012:role/ecsTaskExecutionRole",
        "networkMode": "bridge",
        "requiresCompatibilities": ["EC2"],
        "cpu": "4096",
        "memory": "15360",
        "containerDefinitions": [{
            "name": "ocr",
            "image": image,
            "cpu": 3584,
            "memory": 14336,
            "essential": true,
            "portMappings": [{"containerPort": 8080, "protocol": "tcp"}],
            "environment": [
                {"name": "OCR_MODEL", "value": "paddle-v4"},
                {"name": "CUDA_VISIBLE_DEVICES", "value": "0"}
            ],
            "secrets": [{
                "name": "DATABASE_URL",
                "valueFrom": "arn:aws:secretsmanager:ap-southeast-2:123456789012:secret:filot/db"
            }],
            "healthCheck": {
                "command": ["CMD-SHELL", "curl -f http://localhost:8080/health || exit 1"],
                "interval": 30, "timeout": 5, "retries": 3, "startPeriod": 120
            },
            "logConfiguration": {
                "logDriver": "awslogs",
                "options": {
                    "awslogs-group": "/ecs/filot-ocr-gpu-worker",
                    "awslogs-region": REGION,
                    "awslogs-stream-prefix": "ocr"
                }
            },
            "resourceRequirements": [{"type": "GPU", "value": "1"}],
            "stopTimeout": 60
        }]
    })
}

/// The FiLot topology: two clusters, their task definitions and services, the GPU Auto Scaling
/// Group (instances registered with the GPU cluster) and the backend's target group. Tests can
/// edit the returned document (images, counts, extra services) before seeding.
pub fn filot_topology() -> Value {
    json!({
        "clusters": [BACKEND_CLUSTER, GPU_CLUSTER],
        "task_definitions": [
            backend_task_definition(&format!("{ECR}/filot-backend:2.3.0")),
            gpu_worker_task_definition(&format!("{ECR}/filot-ocr:1.4.2")),
        ],
        "target_groups": [
            {"name": BACKEND_TG, "port": 8080, "protocol": "HTTP", "target_type": "ip",
             "health_check_path": "/health"}
        ],
        "services": [
            {"cluster": BACKEND_CLUSTER, "name": BACKEND_SERVICE, "task_definition": BACKEND_FAMILY,
             "desired_count": 3, "launch_type": "FARGATE",
             "tags": {"app": "filot", "managed-by": "ecs-reconciler"},
             "target_group": BACKEND_TG, "container_name": "api", "container_port": 8080},
            {"cluster": GPU_CLUSTER, "name": GPU_SERVICE, "task_definition": GPU_FAMILY,
             "desired_count": 1, "launch_type": "EC2", "tags": {"app": "filot"}}
        ],
        "auto_scaling_groups": [
            {"name": GPU_ASG, "min_size": 1, "max_size": 4, "desired_capacity": 1,
             "instance_type": "g4dn.xlarge", "cluster": GPU_CLUSTER}
        ]
    })
}

/// Adds a service running the backend task definition to the backend cluster of `topology`.
pub fn add_backend_service(topology: &mut Value, name: &str, deleted: bool) {
    let services = topology["services"]
        .as_array_mut()
        .expect("topology has a services list");
    services.push(json!({
        "cluster": BACKEND_CLUSTER, "name": name, "task_definition": BACKEND_FAMILY,
        "desired_count": 1, "launch_type": "FARGATE", "deleted": deleted
    }));
}

/// A moto server seeded with [`filot_topology`].
pub fn start_filot() -> (Moto, Seeded) {
    let moto = Moto::start();
    let seeded = moto.seed(&filot_topology());
    (moto, seeded)
}

/// The path of the seed script, for tests that run it themselves.
pub fn seed_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/moto/seed.py")
}
