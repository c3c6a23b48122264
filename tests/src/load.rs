//! A bounded load generator for the reliability suite. Each probe (a caller's sidecar, a
//! Service, a path) sends requests at a steady pace over keep-alive connections until told to
//! stop or a limit is reached; every answer is kept with when it was sent and received. A
//! [`Timeline`] of the policies in force then judges each answer, so a wrong answer (a 200
//! where the policy denies, a backend the split does not name) counts as much as an error.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::client::Session;

/// What a probe sends, and through which sidecar.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Who sends it (a name the verdict understands, such as a ServiceAccount).
    pub caller: String,
    /// The caller's sidecar outbound HTTP proxy.
    pub via: SocketAddr,
    /// The Service (Host header).
    pub host: String,
    /// The path of a `GET`.
    pub path: String,
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// An HTTP response.
    Reply {
        /// Its status.
        status: u16,
        /// Its body.
        body: String,
    },
    /// No response: the connection failed or the request timed out.
    Error(String),
}

/// One request.
#[derive(Debug, Clone)]
pub struct Record {
    /// Index of its probe.
    pub probe: usize,
    /// When it was sent.
    pub sent: Instant,
    /// When its answer came.
    pub received: Instant,
    /// The answer.
    pub answer: Answer,
}

/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A running load.
pub struct Load {
    probes: Arc<Vec<Probe>>,
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<Vec<Record>>,
}

impl Load {
    /// Starts one task per probe, each sending a request every `pace` (or as soon as the last
    /// answer came, if slower), at most `limit` each.
    pub fn start(probes: Vec<Probe>, pace: Duration, limit: usize) -> Self {
        let probes = Arc::new(probes);
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..probes.len() {
            let (probes, stop) = (probes.clone(), stop.clone());
            tasks.spawn(async move {
                let probe = &probes[index];
                let session = Session::keep_alive(probe.via);
                let mut ticks = tokio::time::interval(pace);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut records = Vec::new();
                while records.len() < limit && !stop.load(Ordering::Relaxed) {
                    ticks.tick().await;
                    let sent = Instant::now();
                    let headers = [("host", probe.host.as_str())];
                    let answer = match tokio::time::timeout(
                        REQUEST_TIMEOUT,
                        session.request("GET", &probe.path, &headers),
                    )
                    .await
                    {
                        Ok(Ok(reply)) => Answer::Reply {
                            status: reply.status,
                            body: reply.body,
                        },
                        Ok(Err(err)) => Answer::Error(format!("{err:#}")),
                        Err(_) => Answer::Error(format!("no answer in {REQUEST_TIMEOUT:?}")),
                    };
                    records.push(Record {
                        probe: index,
                        sent,
                        received: Instant::now(),
                        answer,
                    });
                }
                records
            });
        }
        Self {
            probes,
            stop,
            tasks,
        }
    }

    /// The probes, by index.
    pub fn probes(&self) -> Arc<Vec<Probe>> {
        self.probes.clone()
    }

    /// Stops sending and returns every record, ordered by when it was sent.
    pub async fn finish(mut self) -> Vec<Record> {
        self.stop.store(true, Ordering::Relaxed);
        let mut records = Vec::new();
        while let Some(done) = self.tasks.join_next().await {
            records.extend(done.unwrap_or_default());
        }
        records.sort_by_key(|record| record.sent);
        records
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tasks.abort_all();
    }
}

/// The policies in force over time: each one from the moment it was written until the next one
/// was applied everywhere (plus a grace: Envoy ACKs a configuration on its main thread and
/// hands it to its workers just after).
#[derive(Debug)]
pub struct Timeline<P> {
    epochs: Vec<Epoch<P>>,
    grace: Duration,
}

#[derive(Debug)]
struct Epoch<P> {
    policy: P,
    written: Option<Instant>,
    applied: Option<Instant>,
}

/// How long after a configuration is applied a request may still meet the previous one.
pub const APPLY_GRACE: Duration = Duration::from_millis(100);

impl<P> Timeline<P> {
    /// `initial` in force from the start.
    pub fn new(initial: P) -> Self {
        Self {
            epochs: vec![Epoch {
                policy: initial,
                written: None,
                applied: Some(Instant::now()),
            }],
            grace: APPLY_GRACE,
        }
    }

    /// `policy` was written at `at`.
    pub fn changed(&mut self, policy: P, at: Instant) {
        self.epochs.push(Epoch {
            policy,
            written: Some(at),
            applied: None,
        });
    }

    /// The latest policy was applied everywhere at `at`.
    pub fn applied(&mut self, at: Instant) {
        if let Some(last) = self.epochs.last_mut() {
            last.applied = Some(at);
        }
    }

    /// How many policies there were.
    pub fn len(&self) -> usize {
        self.epochs.len()
    }

    /// Whether there is none (never: the initial one).
    pub fn is_empty(&self) -> bool {
        self.epochs.is_empty()
    }

    /// The policies a request sent at `sent` and answered at `received` may have met.
    pub fn in_force(&self, sent: Instant, received: Instant) -> Vec<&P> {
        self.epochs
            .iter()
            .enumerate()
            .filter(|(index, epoch)| {
                let starts_before_answer = epoch.written.is_none_or(|at| at <= received);
                let ends_after_send = self
                    .epochs
                    .get(index + 1)
                    .and_then(|next| next.applied)
                    .is_none_or(|at| at + self.grace >= sent);
                starts_before_answer && ends_after_send
            })
            .map(|(_, epoch)| &epoch.policy)
            .collect()
    }
}

/// The judgement of a load.
#[derive(Debug, Default)]
pub struct Report {
    /// Requests sent.
    pub total: usize,
    /// Answers by status (`0` for no answer).
    pub by_status: std::collections::BTreeMap<u16, usize>,
    /// Requests whose answer no policy in force allows, described (the first 20).
    pub wrong: Vec<String>,
    /// How many there were.
    pub wrong_count: usize,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests, answers by status {:?}, {} wrong",
            self.total, self.by_status, self.wrong_count
        )?;
        for wrong in &self.wrong {
            write!(f, "\n  {wrong}")?;
        }
        Ok(())
    }
}

/// Judges every record: `verdict` says whether an answer is one the probe may get under one
/// of the policies in force while it was in flight (`Err` says what was expected).
pub fn judge<P>(
    records: &[Record],
    probes: &[Probe],
    timeline: &Timeline<P>,
    verdict: impl Fn(&Probe, &Answer, &[&P]) -> Result<(), String>,
) -> Report {
    let mut report = Report::default();
    let start = records.first().map(|r| r.sent);
    for record in records {
        report.total += 1;
        let status = match &record.answer {
            Answer::Reply { status, .. } => *status,
            Answer::Error(_) => 0,
        };
        *report.by_status.entry(status).or_default() += 1;
        let probe = &probes[record.probe];
        let policies = timeline.in_force(record.sent, record.received);
        if let Err(expected) = verdict(probe, &record.answer, &policies) {
            report.wrong_count += 1;
            if report.wrong.len() < 20 {
                let at = start.map_or(Duration::ZERO, |start| record.sent - start);
                report.wrong.push(format!(
                    "{} GET {}{} at {at:?} (took {:?}): {:?}; expected {expected}",
                    probe.caller,
                    probe.host,
                    probe.path,
                    record.received - record.sent,
                    record.answer
                ));
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_in_flight_across_a_change_may_meet_either_policy_and_only_those() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut timeline = Timeline::new("a");
        timeline.grace = Duration::ZERO;
        timeline.changed("b", at(1_000));
        timeline.applied(at(1_200));
        timeline.changed("c", at(2_000));
        timeline.applied(at(2_100));
        let in_force = |sent: u64, received: u64| -> Vec<&str> {
            timeline
                .in_force(at(sent), at(received))
                .into_iter()
                .copied()
                .collect()
        };
        assert_eq!(in_force(500, 600), ["a"]);
        assert_eq!(in_force(1_100, 1_150), ["a", "b"]);
        assert_eq!(in_force(1_300, 1_400), ["b"]);
        assert_eq!(in_force(1_900, 2_050), ["b", "c"]);
        assert_eq!(in_force(2_200, 2_300), ["c"]);
        // A request slow enough to span every change met any of them.
        assert_eq!(in_force(900, 2_300), ["a", "b", "c"]);
    }
}
