//! One real Envoy process per [`Envoy`] value: started from a generated bootstrap, polled until
//! its admin interface says it is ready, killed when dropped, its log printed if the test that
//! owns it panics.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::Value;

use crate::client::{self, Reply};
use crate::paths;
use crate::poll;

const ADMIN_ADDRESS_FILE: &str = "admin-address";

/// How long Envoy may take to start (compiling the wasm module with V8 is most of it).
pub const START_DEADLINE: Duration = Duration::from_secs(60);

/// A running Envoy process.
#[derive(Debug)]
pub struct Envoy {
    child: Mutex<Child>,
    dir: tempfile::TempDir,
    admin: SocketAddr,
}

impl Envoy {
    /// Starts Envoy with `bootstrap` and waits until `/ready` answers 200.
    ///
    /// # Errors
    /// When Envoy is missing, exits, or is not ready within [`START_DEADLINE`]; the error
    /// carries Envoy's log.
    pub async fn start(bootstrap: &Value) -> anyhow::Result<Self> {
        let envoy = Self::spawn(bootstrap).await?;
        let ready = poll::until("Envoy /ready", START_DEADLINE, || async {
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
    async fn spawn(bootstrap: &Value) -> anyhow::Result<Self> {
        let mut envoy = Self::launch(bootstrap)?;
        let admin_path = envoy.dir.path().join(ADMIN_ADDRESS_FILE);
        let admin = poll::until("Envoy admin address file", START_DEADLINE, || async {
            envoy.check_alive()?;
            Ok(read_admin_address(&admin_path))
        })
        .await
        .map_err(|err| envoy.with_log(err))?;
        envoy.admin = admin;
        Ok(envoy)
    }

    /// Writes the bootstrap and starts the process, without waiting for anything.
    fn launch(bootstrap: &Value) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("weft-envoy-").tempdir()?;
        let config_path = dir.path().join("envoy.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(bootstrap)?)?;
        let admin_path = dir.path().join(ADMIN_ADDRESS_FILE);
        let log = std::fs::File::create(dir.path().join("envoy.log"))?;
        let child = Command::new(paths::envoy_binary()?)
            .arg("--config-path")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            // Envoy picks a base id no other Envoy on the machine uses, so tests run in parallel.
            .arg("--use-dynamic-base-id")
            .args(["--concurrency", "1", "--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start Envoy")?;
        Ok(Self {
            child: Mutex::new(child),
            dir,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        })
    }

    /// Starts Envoy with `bootstrap`, which is expected to be refused, and waits for it to
    /// exit. Returns the exit code and the log.
    ///
    /// # Errors
    /// When Envoy cannot be started or is still running after [`START_DEADLINE`].
    pub async fn expect_exit(bootstrap: &Value) -> anyhow::Result<(Option<i32>, String)> {
        let envoy = Self::launch(bootstrap)?;
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
