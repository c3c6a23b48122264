//! One real Envoy process per [`Envoy`] value: started from a generated bootstrap, polled until
//! its admin interface says it is ready, killed when dropped, its log printed if the test that
//! owns it panics. For benchmarks an Envoy can run under valgrind's callgrind, which counts the
//! instructions it executes ([`Envoy::start_counting_instructions`]): a figure that does not
//! move with the load of a shared machine, unlike time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};
use serde_json::Value;

use crate::client::{self, Reply};
use crate::paths;
use crate::poll;

const ADMIN_ADDRESS_FILE: &str = "admin-address";

/// How long Envoy may take to start (compiling the wasm module with V8 is most of it).
pub const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long Envoy may take to start under callgrind, which runs it about 50 times slower.
pub const CALLGRIND_START_DEADLINE: Duration = Duration::from_secs(600);
/// Name of callgrind's output file in the Envoy's folder; each dump adds `.N`.
const CALLGRIND_OUT: &str = "callgrind.out";

/// Worker threads of every Envoy these tests start, unless [`Envoy::start_with_workers`] says
/// otherwise: one, so that a test's requests meet one VM and a benchmark's one event loop.
const DEFAULT_WORKERS: u32 = 1;

/// How an Envoy process is started.
#[derive(Debug, Clone, Copy)]
struct Launch {
    /// Under callgrind, instrumentation off until [`Envoy::count_instructions`].
    callgrind: bool,
    /// `--concurrency`.
    workers: u32,
}

impl Launch {
    const PLAIN: Self = Self {
        callgrind: false,
        workers: DEFAULT_WORKERS,
    };
}

/// A running Envoy process.
#[derive(Debug)]
pub struct Envoy {
    child: Mutex<Child>,
    dir: tempfile::TempDir,
    admin: SocketAddr,
    /// Runs under callgrind with instrumentation off until [`Envoy::count_instructions`].
    callgrind: bool,
}

impl Envoy {
    /// Starts Envoy with `bootstrap` and waits until `/ready` answers 200.
    ///
    /// # Errors
    /// When Envoy is missing, exits, or is not ready within [`START_DEADLINE`]; the error
    /// carries Envoy's log.
    pub async fn start(bootstrap: &Value) -> anyhow::Result<Self> {
        Self::start_as(bootstrap, Launch::PLAIN).await
    }

    /// Starts Envoy as [`Envoy::start`] does, with `workers` worker threads (`--concurrency`).
    ///
    /// # Errors
    /// As [`Envoy::start`].
    pub async fn start_with_workers(bootstrap: &Value, workers: u32) -> anyhow::Result<Self> {
        Self::start_as(
            bootstrap,
            Launch {
                workers,
                ..Launch::PLAIN
            },
        )
        .await
    }

    /// Starts Envoy with `bootstrap` under valgrind's callgrind, instrumentation off (it runs
    /// slowly, but counts nothing) until [`Envoy::count_instructions`] turns it on.
    ///
    /// # Errors
    /// As [`Envoy::start`], or when valgrind is missing (`make setup` installs it).
    pub async fn start_counting_instructions(bootstrap: &Value) -> anyhow::Result<Self> {
        Self::start_as(
            bootstrap,
            Launch {
                callgrind: true,
                ..Launch::PLAIN
            },
        )
        .await
    }

    async fn start_as(bootstrap: &Value, launch: Launch) -> anyhow::Result<Self> {
        let deadline = if launch.callgrind {
            CALLGRIND_START_DEADLINE
        } else {
            START_DEADLINE
        };
        let envoy = Self::spawn(bootstrap, launch, deadline).await?;
        let ready = poll::until("Envoy /ready", deadline, || async {
            envoy.check_alive()?;
            Ok(client::get(envoy.admin, "/ready")
                .await
                .ok()
                .filter(|reply| reply.status == 200)
                .map(|_| ()))
        })
        .await;
        match ready {
            Ok(()) => Ok(envoy),
            Err(err) => Err(envoy.with_log(err)),
        }
    }

    /// Starts Envoy with `bootstrap` and waits only for its admin interface to listen.
    async fn spawn(bootstrap: &Value, launch: Launch, deadline: Duration) -> anyhow::Result<Self> {
        let mut envoy = Self::launch(bootstrap, launch)?;
        let admin_path = envoy.dir.path().join(ADMIN_ADDRESS_FILE);
        let admin = poll::until("Envoy admin address file", deadline, || async {
            envoy.check_alive()?;
            Ok(read_admin_address(&admin_path))
        })
        .await
        .map_err(|err| envoy.with_log(err))?;
        envoy.admin = admin;
        Ok(envoy)
    }

    /// Writes the bootstrap and starts the process, without waiting for anything.
    fn launch(bootstrap: &Value, launch: Launch) -> anyhow::Result<Self> {
        let Launch { callgrind, workers } = launch;
        let dir = tempfile::Builder::new().prefix("weft-envoy-").tempdir()?;
        let config_path = dir.path().join("envoy.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(bootstrap)?)?;
        let admin_path = dir.path().join(ADMIN_ADDRESS_FILE);
        let log = std::fs::File::create(dir.path().join("envoy.log"))?;
        let mut command = if callgrind {
            let mut valgrind = Command::new("valgrind");
            valgrind
                .args([
                    "--tool=callgrind",
                    // V8 writes the machine code it runs; valgrind must notice.
                    "--smc-check=all-non-file",
                    "--instr-atstart=no",
                ])
                .arg(format!(
                    "--callgrind-out-file={}",
                    dir.path().join(CALLGRIND_OUT).display()
                ))
                .arg(paths::envoy_executable()?);
            valgrind
        } else {
            Command::new(paths::envoy_binary()?)
        };
        let child = command
            .arg("--config-path")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            // Envoy picks a base id no other Envoy on the machine uses, so tests run in parallel.
            .arg("--use-dynamic-base-id")
            .arg("--concurrency")
            .arg(workers.to_string())
            .args(["--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| match callgrind {
                true => "cannot start Envoy under valgrind (run `make setup`)",
                false => "cannot start Envoy",
            })?;
        Ok(Self {
            child: Mutex::new(child),
            dir,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            callgrind,
        })
    }

    /// The instructions this Envoy (all its threads) executes while `work` runs, counted by
    /// callgrind, and `work`'s result. Only for an Envoy started with
    /// [`Envoy::start_counting_instructions`]; one count at a time.
    ///
    /// # Errors
    /// When the Envoy is not under callgrind, `callgrind_control` fails, `work` fails, or the
    /// dump does not appear within [`START_DEADLINE`].
    pub async fn count_instructions<T>(
        &self,
        work: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<(T, u64)> {
        ensure!(self.callgrind, "this Envoy does not run under callgrind");
        let dumps_before = self.callgrind_dumps()?.len();
        self.callgrind_control(&["--instr=on"])?;
        let result = work.await;
        self.callgrind_control(&["--dump"])?;
        self.callgrind_control(&["--instr=off"])?;
        let result = result?;
        let dump = poll::until("callgrind's dump", START_DEADLINE, || async {
            let dumps = self.callgrind_dumps()?;
            Ok(dumps
                .into_iter()
                .skip(dumps_before)
                .find_map(|path| callgrind_summary(&path)))
        })
        .await
        .map_err(|err| self.with_log(err))?;
        Ok((result, dump))
    }

    fn callgrind_control(&self, args: &[&str]) -> anyhow::Result<()> {
        let output = Command::new("callgrind_control")
            .args(args)
            .arg(self.pid().to_string())
            .output()
            .context("cannot run callgrind_control (run `make setup`)")?;
        ensure!(
            output.status.success(),
            "callgrind_control {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    /// The dump files callgrind has written so far (`callgrind.out.1`, `.2`, ...), in order.
    fn callgrind_dumps(&self) -> anyhow::Result<Vec<PathBuf>> {
        let mut dumps: Vec<(u32, PathBuf)> = std::fs::read_dir(self.dir.path())?
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name();
                let number = name
                    .to_str()?
                    .strip_prefix(CALLGRIND_OUT)?
                    .strip_prefix('.')?;
                Some((number.parse().ok()?, entry.path()))
            })
            .collect();
        dumps.sort();
        Ok(dumps.into_iter().map(|(_, path)| path).collect())
    }

    /// Starts Envoy with `bootstrap`, which is expected to be refused, and waits for it to
    /// exit. Returns the exit code and the log.
    ///
    /// # Errors
    /// When Envoy cannot be started or is still running after [`START_DEADLINE`].
    pub async fn expect_exit(bootstrap: &Value) -> anyhow::Result<(Option<i32>, String)> {
        let envoy = Self::launch(bootstrap, Launch::PLAIN)?;
        let status = poll::until("Envoy to exit", START_DEADLINE, || async {
            match envoy.child.lock() {
                Ok(mut child) => Ok(child.try_wait()?),
                Err(_) => bail!("Envoy process handle poisoned"),
            }
        })
        .await
        .map_err(|err| envoy.with_log(err))?;
        Ok((status.code(), envoy.log()))
    }

    /// `err` with Envoy's log so far appended, for errors that a test will show.
    fn with_log(&self, err: anyhow::Error) -> anyhow::Error {
        anyhow!("{err:#}\n--- Envoy log ---\n{}", self.log())
    }

    /// Fails if the process has exited.
    fn check_alive(&self) -> anyhow::Result<()> {
        let exited = match self.child.lock() {
            Ok(mut child) => child.try_wait()?,
            Err(_) => bail!("Envoy process handle poisoned"),
        };
        match exited {
            None => Ok(()),
            Some(status) => bail!("Envoy exited ({status})"),
        }
    }

    /// Everything Envoy has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_else(|err| format!("(no log: {err})"))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("envoy.log")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child
            .lock()
            .map(|child| child.id())
            .unwrap_or_default()
    }

    /// The admin interface's address.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// `GET path` on the admin interface.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<Reply> {
        client::get(self.admin, path).await
    }

    /// A scrape of `/stats/prometheus`.
    ///
    /// # Errors
    /// When the admin interface does not answer 200 or the text does not parse.
    pub async fn prometheus(&self) -> anyhow::Result<crate::prometheus::Metrics> {
        let reply = self.admin_get("/stats/prometheus").await?;
        ensure!(reply.status == 200, "/stats/prometheus: {}", reply.status);
        crate::prometheus::Metrics::parse(&reply.body)
    }

    /// Scrapes `/stats/prometheus` until `ready` holds, and returns that scrape. Envoy merges
    /// histograms from its workers asynchronously when stats flush (with the harness's
    /// `stats_flush_on_admin`, on each admin request), so a histogram shows the requests before
    /// a scrape only in a later one.
    ///
    /// # Errors
    /// When `ready` does not hold within [`START_DEADLINE`]; the error carries the last scrape.
    pub async fn prometheus_when(
        &self,
        ready: impl Fn(&crate::prometheus::Metrics) -> bool,
    ) -> anyhow::Result<crate::prometheus::Metrics> {
        let last = Mutex::new(String::new());
        poll::until("the metrics to add up", START_DEADLINE, || async {
            let reply = self.admin_get("/stats/prometheus").await?;
            let metrics = crate::prometheus::Metrics::parse(&reply.body)?;
            if let Ok(mut last) = last.lock() {
                *last = reply.body;
            }
            Ok(ready(&metrics).then_some(metrics))
        })
        .await
        .map_err(|err| {
            let scrape = last.lock().map(|text| text.clone()).unwrap_or_default();
            anyhow!(
                "{err:#}\n--- last /stats/prometheus (weft) ---\n{}",
                weft_lines(&scrape)
            )
        })
    }

    /// The address that listener `name` is bound to, from `/listeners?format=json`.
    pub async fn listener(&self, name: &str) -> anyhow::Result<SocketAddr> {
        let reply = self.admin_get("/listeners?format=json").await?;
        let listeners: Value = serde_json::from_str(&reply.body)?;
        let statuses = listeners["listener_statuses"]
            .as_array()
            .context("no listener_statuses in /listeners")?;
        let status = statuses
            .iter()
            .find(|status| status["name"] == name)
            .with_context(|| format!("no listener {name}: {}", reply.body))?;
        let socket = &status["local_address"]["socket_address"];
        let address = socket["address"]
            .as_str()
            .context("listener has no address")?;
        let port = socket["port_value"]
            .as_u64()
            .context("listener has no port")?;
        Ok(format!("{address}:{port}").parse()?)
    }

    /// Waits until Envoy serves listener `name`, and returns its address.
    pub async fn wait_for_listener(&self, name: &str) -> anyhow::Result<SocketAddr> {
        poll::until(&format!("listener {name}"), START_DEADLINE, || async {
            self.check_alive()?;
            Ok(self.listener(name).await.ok())
        })
        .await
        .map_err(|err| self.with_log(err))
    }

    /// Waits until the counter `name` reaches at least `at_least`, and returns its value.
    pub async fn wait_for_stat(&self, name: &str, at_least: u64) -> anyhow::Result<u64> {
        poll::until(&format!("{name} >= {at_least}"), START_DEADLINE, || async {
            Ok(self.stat(name).await?.filter(|value| *value >= at_least))
        })
        .await
        .map_err(|err| self.with_log(err))
    }

    /// The value of the counter or gauge `name` in `/stats?format=json`, if Envoy has it.
    pub async fn stat(&self, name: &str) -> anyhow::Result<Option<u64>> {
        let reply = self
            .admin_get(&format!(
                "/stats?format=json&filter=^{}$",
                regex_escape(name)
            ))
            .await?;
        let stats: Value = serde_json::from_str(&reply.body)?;
        Ok(stats["stats"].as_array().and_then(|stats| {
            stats
                .iter()
                .find(|stat| stat["name"] == name)
                .and_then(|stat| stat["value"].as_u64())
        }))
    }

    /// Waits until the log contains `needle`, and returns the first line that does.
    pub async fn wait_for_log(&self, needle: &str, deadline: Duration) -> anyhow::Result<String> {
        poll::until(
            &format!("{needle:?} in the Envoy log"),
            deadline,
            || async {
                Ok(self
                    .log()
                    .lines()
                    .find(|line| line.contains(needle))
                    .map(str::to_owned))
            },
        )
        .await
        .map_err(|err| self.with_log(err))
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if let Ok(child) = self.child.get_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- Envoy log ({}) ---\n{}",
                self.log_path().display(),
                self.log()
            );
        }
    }
}

/// The instruction total of a complete callgrind dump (its `summary:` line), if it has one yet.
fn callgrind_summary(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("summary:"))?
        .trim()
        .parse()
        .ok()
}

/// The lines of a Prometheus scrape about weft's own metrics.
fn weft_lines(scrape: &str) -> String {
    scrape
        .lines()
        .filter(|line| line.contains("weft_"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn read_admin_address(path: &Path) -> Option<SocketAddr> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escape = "\\.+*?()|[]{}^$".contains(c);
            escape.then_some('\\').into_iter().chain(std::iter::once(c))
        })
        .collect()
}
