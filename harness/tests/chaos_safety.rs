//! Chaos safety, with the real binaries: a chaos run killed with SIGKILL at any point of its
//! life leaves nothing behind that `meshtest chaos revert` does not restore (and a second revert
//! finds nothing), and a fault whose run was killed and never reverted ends by its lease. After
//! either, the conformance suite holds against the same mesh.
//!
//! Every command runs from the repository root with a private MESHTEST_STATE_DIR; a failure
//! prints the command, its working directory, stdout and stderr.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{processes_mentioning, pyairtable_dir};

/// Every fault kind at once, each for 3 s so that a run reaches its first revert quickly. The
/// workload fault is a small delay, not a 503 (a replica returning 503s is ejected by outlier
/// detection for 30 s, which the conformance run that follows would see), and the load on
/// /api/v1/airtable/bases is low.
const ALL_KINDS: &str = r##"name: all-kinds-kill-9
description: every fault kind at once, 3 s each (kill -9 tests)
load:
  rate: 10
  routes:
  - path: /api/v1/airtable/bases
    token: {tenant: all-kinds}
phases:
  before: 1s
  after: 1s
method:
- name: workload
  duration: 3s
  target: {pods: [airtable-gateway-1]}
  fault: {workload: {delay: 5ms}}
- name: pod-kill
  duration: 3s
  target: {pods: [workflow-engine-0]}
  fault: {pod-kill: {}}
- name: pod-pause
  duration: 3s
  target: {pods: [llm-orchestrator-1]}
  fault: {pod-pause: {}}
- name: route-fault
  duration: 3s
  fault: {route-fault: {virtual_service: airtable-gateway, route: "#0", delay: {fixed: 10ms, percent: 50%}}}
- name: network
  duration: 3s
  target: {pods: [file-processor-0]}
  fault: {network: {from: {service: api-gateway, mode: all}, latency: 5ms}}
- name: certificate
  duration: 3s
  target: {pods: [llm-orchestrator-0]}
  fault: {certificate: {cert: expired}}
- name: rejected-push
  duration: 3s
  target: {pods: [file-processor-0]}
  fault: {rejected-push: {}}
"##;

/// A workload delay and a network fault (the lease test): long enough that only the lease can
/// end them before the run would.
const NETWORK_AND_DELAY: &str = r#"name: lease-expiry
description: a workload delay and a network fault; the run is killed and nobody reverts
load:
  rate: 10
  routes:
  - path: /api/v1/airtable/bases
    token: {tenant: lease-expiry}
phases:
  before: 1s
  after: 1s
method:
- name: workload
  duration: 30s
  target: {pods: [airtable-gateway-1]}
  fault: {workload: {delay: 5ms}}
- name: network
  duration: 30s
  target: {pods: [file-processor-0]}
  fault: {network: {from: {service: api-gateway, mode: all}, latency: 5ms}}
"#;

const POINTS: [&str; 10] = [
    "before-journal",
    "journaled",
    "applied:workload",
    "applied:pod-kill",
    "applied:pod-pause",
    "applied:route-fault",
    "applied:network",
    "applied:certificate",
    "applied:rejected-push",
    "reverting",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// A test's private world: its state directory (state.json, chaos journals) and scratch files.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        World {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_meshtest"));
        c.args(args)
            .current_dir(repo_root())
            .env("MESHTEST_STATE_DIR", self.state_dir())
            .env_remove("MESHTEST_TARGET")
            .env_remove("RUST_BACKTRACE");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        support::output_within(&mut self.command(args), support::COMMAND_DEADLINE)
    }

    fn explain(&self, args: &[&str], code: Option<i32>, stdout: &str, stderr: &str) -> String {
        format!(
            "command: MESHTEST_STATE_DIR={} meshtest {}\ncwd: {}\nexit: {code:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            self.state_dir().display(),
            args.join(" "),
            repo_root().display(),
        )
    }

    fn explain_output(&self, args: &[&str], out: &Output) -> String {
        self.explain(
            args,
            out.status.code(),
            &String::from_utf8_lossy(&out.stdout),
            &String::from_utf8_lossy(&out.stderr),
        )
    }

    /// Runs `args`, asserting exit `code`; returns stdout.
    fn expect(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}",
            self.explain_output(args, &out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `meshtest up` in the background until it prints "ready".
    fn up(&self) -> UpProcess {
        let mesh = pyairtable_dir();
        // With Prometheus, so the suite that follows the chaos runs includes observability.
        let args = ["up", "--observe", "--mesh", mesh.to_str().unwrap()];
        let child = self
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning meshtest up");
        let mut up = UpProcess {
            child,
            run_dir: String::new(),
        };
        let mut lines = BufReader::new(up.child.stdout.take().unwrap()).lines();
        let ready = lines.next().and_then(Result::ok).unwrap_or_default();
        assert!(
            ready.contains("ready"),
            "command: meshtest {}\ncwd: {}\nfirst line: {ready:?}",
            args.join(" "),
            repo_root().display()
        );
        // Keep draining stdout so `up` never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let state: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(self.state_dir().join("state.json")).expect("state.json"),
        )
        .expect("state.json is JSON");
        up.run_dir = state["run_dir"].as_str().expect("run_dir").to_string();
        up
    }

    /// Starts a chaos run of `profile` against the running mesh, stopping at `point`.
    fn chaos(&self, profile: &Path, report: &Path, extra: &[&str]) -> ChaosProcess {
        let mut args: Vec<String> = [
            "chaos",
            "--attach",
            "--profile",
            profile.to_str().unwrap(),
            "--no-progress",
            "--report-dir",
            report.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = self
            .command(&argv)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning meshtest chaos");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = channel();
        {
            let mut pipe = child.stdout.take().unwrap();
            let stdout = stdout.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    stdout
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        {
            let pipe = child.stderr.take().unwrap();
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    {
                        let mut s = stderr.lock().unwrap();
                        s.push_str(&line);
                        s.push('\n');
                    }
                    let _ = tx.send(line);
                }
            });
        }
        ChaosProcess {
            child,
            args,
            stdout,
            stderr,
            lines,
            explain: Box::new({
                let state = self.state_dir();
                move |args: &[String], code, out: &str, err: &str| {
                    format!(
                        "command: MESHTEST_STATE_DIR={} meshtest {}\ncwd: {}\nexit: {code:?}\nstdout:\n{out}\nstderr:\n{err}",
                        state.display(),
                        args.join(" "),
                        repo_root().display(),
                    )
                }
            }),
        }
    }
}

/// A `meshtest up` child that is stopped (and reaped) when the test ends, pass or fail.
struct UpProcess {
    child: Child,
    run_dir: String,
}

impl UpProcess {
    /// Stops `up` with `meshtest down` and checks that nothing it started is left.
    fn down(mut self, world: &World) {
        world.expect(&["down"], 0);
        let status = self.child.wait().expect("waiting for up");
        assert!(status.success(), "up exited with {status}");
        let gone = poll(Duration::from_secs(10), || {
            processes_mentioning(&self.run_dir).is_empty()
        });
        assert!(
            gone,
            "left behind by up: {:?}",
            processes_mentioning(&self.run_dir)
        );
    }
}

impl Drop for UpProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Explain = Box<dyn Fn(&[String], Option<i32>, &str, &str) -> String>;

/// A running `meshtest chaos`: its stderr line by line, its stdout as it comes. Killed and
/// reaped when dropped, so a failing test leaves no chaos process behind.
struct ChaosProcess {
    child: Child,
    args: Vec<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    lines: Receiver<String>,
    explain: Explain,
}

impl ChaosProcess {
    fn explain(&self, code: Option<i32>) -> String {
        (self.explain)(
            &self.args,
            code,
            &self.stdout.lock().unwrap(),
            &self.stderr.lock().unwrap(),
        )
    }

    /// Waits (at most `deadline`) for the run to say it is paused at `point`.
    fn wait_paused(&mut self, point: &str, deadline: Duration) -> Duration {
        let started = Instant::now();
        let wanted = format!("meshtest: paused at {point} (test hook; kill me)");
        loop {
            let left = deadline.saturating_sub(started.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.trim() == wanted => return started.elapsed(),
                Ok(_) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    // stderr closed: the run ended without reaching the point.
                    let status = self.child.wait().expect("waiting for chaos");
                    panic!(
                        "the chaos run ended before pausing at {point}\n{}",
                        self.explain(status.code())
                    );
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no \"paused at {point}\" within {deadline:?}\n{}",
                    self.explain(None)
                ),
            }
        }
    }

    /// SIGKILL (no cleanup code runs), reaped so its owner record is that of a dead process.
    fn kill_9(&mut self) -> ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        self.child.kill().expect("SIGKILL");
        let status = self.child.wait().expect("reaping chaos");
        assert_eq!(
            status.signal(),
            Some(9),
            "not killed by SIGKILL\n{}",
            self.explain(status.code())
        );
        status
    }
}

impl Drop for ChaosProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The two tests take turns: each runs a mesh, chaos runs and the conformance suite, whose
/// timing checks should not share two cores with another mesh's.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn take_turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Polls `check` until it holds or `deadline` passes; returns whether it held.
fn poll(deadline: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if check() {
            return true;
        }
        if start.elapsed() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `meshtest run --attach` (the default suite, resilience.feature's own faults included) holds
/// everything (exit 0); on failure the tail of its output, and
/// its report is kept.
fn suite_holds(world: &World, name: &str) -> Duration {
    let started = Instant::now();
    let report =
        std::env::temp_dir().join(format!("chaos_safety-{name}-suite-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&report);
    let args = ["run", "--attach", "--report-dir", report.to_str().unwrap()];
    let out = world.run(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the suite does not hold after the chaos runs (report kept in {})\n{}",
        report.display(),
        world.explain(
            &args,
            out.status.code(),
            &tail(&stdout, 80),
            &tail(&String::from_utf8_lossy(&out.stderr), 40)
        )
    );
    let _ = std::fs::remove_dir_all(&report);
    started.elapsed()
}

/// The chaos runs of this test (by their unique report directories) are all gone.
fn no_chaos_process_left(marker: &Path) {
    let left = processes_mentioning(marker.to_str().unwrap());
    assert!(left.is_empty(), "chaos processes left running: {left:?}");
}

#[test]
fn kill_9_at_every_point_then_revert_twice_then_the_suite_passes() {
    let _turn = take_turn();
    let started = Instant::now();
    let world = World::new();
    let profile = world.path("all-kinds.yaml");
    std::fs::write(&profile, ALL_KINDS).unwrap();
    let up = world.up();
    world.expect(&["status"], 0);
    for point in POINTS {
        let round = Instant::now();
        let report = world.path(&format!("chaos-{}", point.replace(':', "-")));
        let mut chaos = world.chaos(&profile, &report, &["--pause-at", point]);
        let paused_after = chaos.wait_paused(point, Duration::from_secs(45));
        chaos.kill_9();
        drop(chaos);
        no_chaos_process_left(&report);

        let first = world.expect(&["chaos", "revert"], 0);
        let second = world.expect(&["chaos", "revert"], 0);
        assert!(
            second.contains("nothing left to revert"),
            "after killing at {point}, the first revert said:\n{first}\n{}",
            world.explain(&["chaos", "revert"], Some(0), &second, "")
        );
        let status = world.run(&["status"]);
        let text = String::from_utf8_lossy(&status.stdout);
        assert!(
            status.status.code() == Some(0) && text.contains("chaos faults in force: none"),
            "after killing at {point} and reverting:\n{first}\n{}",
            world.explain_output(&["status"], &status)
        );
        let reverted: Vec<&str> = first.lines().collect();
        println!(
            "{point:<22} paused after {:>5.2}s, round {:>5.2}s; first revert: {}",
            paused_after.as_secs_f64(),
            round.elapsed().as_secs_f64(),
            reverted.last().copied().unwrap_or("")
        );
    }
    let suite = suite_holds(&world, "kill-9");
    println!(
        "suite after the ten kills: exit 0 in {:.1}s",
        suite.as_secs_f64()
    );
    up.down(&world);
    no_chaos_process_left(world.dir.path());
    println!(
        "kill_9_at_every_point_then_revert_twice_then_the_suite_passes: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_fault_whose_chaos_process_was_killed_expires_by_its_lease() {
    let _turn = take_turn();
    let started = Instant::now();
    let world = World::new();
    let profile = world.path("lease.yaml");
    std::fs::write(&profile, NETWORK_AND_DELAY).unwrap();
    let up = world.up();
    world.expect(&["status"], 0);
    let report = world.path("chaos-lease");
    let mut chaos = world.chaos(
        &profile,
        &report,
        &["--lease", "3s", "--pause-at", "applied:network"],
    );
    chaos.wait_paused("applied:network", Duration::from_secs(45));
    chaos.kill_9();
    let killed_at = Instant::now();
    drop(chaos);
    no_chaos_process_left(&report);

    // Right after the kill both faults are in force, held by the mesh (and the agent).
    let first = world.expect(&["status"], 0);
    let in_force = first
        .lines()
        .find(|l| l.starts_with("chaos faults in force:"))
        .unwrap_or("");
    assert!(
        in_force == "chaos faults in force: 2",
        "right after the kill, the faults should still be in force\n{}",
        world.explain(&["status"], Some(0), &first, "")
    );
    // Nobody reverts: the leases end them.
    let mut last = String::new();
    let ended = poll(Duration::from_secs(20), || {
        let out = world.run(&["status"]);
        last = world.explain_output(&["status"], &out);
        out.status.code() == Some(0)
            && String::from_utf8_lossy(&out.stdout).contains("chaos faults in force: none")
    });
    assert!(
        ended,
        "the faults did not end by their 3 s lease within 20 s of the kill\n{last}"
    );
    let expired_after = killed_at.elapsed();
    println!(
        "faults in force right after the kill; none {:.2}s after it (lease 3 s)",
        expired_after.as_secs_f64()
    );
    let suite = suite_holds(&world, "lease");
    println!(
        "suite after the lease expiry: exit 0 in {:.1}s",
        suite.as_secs_f64()
    );
    up.down(&world);
    no_chaos_process_left(world.dir.path());
    println!(
        "a_fault_whose_chaos_process_was_killed_expires_by_its_lease: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
