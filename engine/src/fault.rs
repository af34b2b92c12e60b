//! Named fault-injection points, for tests that must crash or stop a process at an exact step
//! instead of sleeping and hoping. A point is a step of the work (`checkpoint`: a training
//! run's checkpoint of an epoch is written) with a key naming the instance (the run's folder
//! in the store and the epoch: `training/fashion/v1/epoch-2`).
//!
//! `QUIVER_FAULT` arms points, separated by `;`, each `point@key-pattern=action`:
//!
//! - `kill`: the process SIGKILLs itself there, as a crash would;
//! - `kill-once:FILE`: the same, but only the first process to get there (across processes: the
//!   one that creates FILE), so that a restarted or another process goes on;
//! - `error`: the step fails with an error naming the point;
//! - `pause:FILE[:SECONDS]`: writes FILE (the test's signal that the point is reached) and waits
//!   there while FILE exists: the test removes it to let the work go on, or stops the process.
//!   After SECONDS (300 unless given) the step fails with an error naming the point instead;
//! - `trace:FILE`: appends a line `point@key` to FILE and goes on (how often, and for which
//!   keys, a step ran).
//!
//! A key pattern may use `*` for any run of characters. The points:
//!
//! | point | reached | key |
//! |---|---|---|
//! | `read_images` | before a chunk of image files' bytes is read | the chunk's first file URL |
//! | `tfrecord_write` | after a TFRecord writer staged its first batch | the destination URL |
//! | `epoch_start` | before a training worker starts an epoch | `<run folder>/rank-<R>/epoch-<N>` |
//! | `checkpoint` | after an epoch's checkpoint and metrics are written | `<run folder>/epoch-<N>` |
//! | `coordinator_epoch` | when the driver hears that a trial finished an epoch | `<trial URL>/epoch-<N>` |
//! | `job_step` | before an attempt of a job's step | `<job>/<step>/attempt-<N>` |
//! | `serve_infer` | when `quiver serve` starts a request's forward pass | the model's name |
//! | `serve_poll` | when `quiver serve` looks for a model's new versions | the model's name |
//!
//! Run folders are paths in their store (`tmp/store/training/fashion/v1` for a local store).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::error::{QuiverError, Result};
use crate::{bail, err};

/// What an armed point does.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Kill,
    KillOnce(String),
    Error,
    Pause(String, Duration),
    Trace(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Fault {
    point: String,
    pattern: String,
    action: Action,
}

/// The environment variable that arms fault points.
pub const FAULT_VAR: &str = "QUIVER_FAULT";

fn parse(spec: &str) -> Result<Vec<Fault>> {
    spec.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|entry| {
            let bad =
                |why: &str| err!(QuiverError::Config, "{FAULT_VAR} entry '{entry}': {why}");
            let (target, action) = entry
                .split_once('=')
                .ok_or_else(|| bad("expected point@key=action"))?;
            let (point, pattern) = target.split_once('@').unwrap_or((target, "*"));
            let action = match action.split_once(':') {
                None if action == "kill" => Action::Kill,
                None if action == "error" => Action::Error,
                Some(("kill-once", file)) if !file.is_empty() => Action::KillOnce(file.into()),
                Some(("pause", rest)) if !rest.is_empty() => {
                    let limited = rest
                        .rsplit_once(':')
                        .and_then(|(file, secs)| Some((file, secs.parse().ok()?)));
                    match limited {
                        Some((file, secs)) => Action::Pause(file.into(), Duration::from_secs(secs)),
                        None => Action::Pause(rest.into(), PAUSE_LIMIT),
                    }
                }
                Some(("trace", file)) if !file.is_empty() => Action::Trace(file.into()),
                _ => {
                    return Err(bad(
                        "the action must be kill, kill-once:FILE, error, pause:FILE[:SECONDS] or trace:FILE",
                    ));
                }
            };
            Ok(Fault {
                point: point.trim().into(),
                pattern: pattern.trim().into(),
                action,
            })
        })
        .collect()
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters.
fn matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    if !text.ends_with(last) {
        return false;
    }
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

fn armed() -> &'static [Fault] {
    static FAULTS: OnceLock<Vec<Fault>> = OnceLock::new();
    FAULTS.get_or_init(|| match std::env::var(FAULT_VAR) {
        Ok(spec) => parse(&spec).unwrap_or_else(|e| {
            // A test that arms a point it misspelled must not pass by accident.
            eprintln!("error: {e}");
            std::process::exit(2)
        }),
        Err(_) => Vec::new(),
    })
}

/// Checks that `QUIVER_FAULT`, when set, is well-formed (processes call it at start-up).
pub fn check_environment() -> Result<()> {
    match std::env::var(FAULT_VAR) {
        Ok(spec) => parse(&spec).map(|_| ()),
        Err(_) => Ok(()),
    }
}

fn kill_self() -> ! {
    // SAFETY: kill(2) on our own pid with a valid signal number has no memory effects.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    unreachable!("SIGKILL is not delivered late")
}

/// A pause while its file exists, at most `limit`.
struct Pause {
    file: String,
    limit: Duration,
    since: Instant,
}

impl Pause {
    /// Writes the file that says the point is reached.
    fn start(file: &str, limit: Duration) -> Self {
        let tmp = format!("{file}.tmp");
        let _ = std::fs::write(&tmp, std::process::id().to_string())
            .and_then(|()| std::fs::rename(&tmp, file));
        Self {
            file: file.into(),
            limit,
            since: Instant::now(),
        }
    }

    /// Whether to go on waiting: the file is there and the limit not reached (an error then).
    fn waiting(&self, point: &str, key: &str, file_exists: bool) -> Result<bool> {
        if file_exists && self.since.elapsed() >= self.limit {
            bail!(
                QuiverError::Fault,
                "fault point {point}@{key} paused for {:?} and {} was not removed",
                self.limit,
                self.file
            );
        }
        Ok(file_exists)
    }
}

/// What to do at `point` for `key`: nothing, die, fail, or pause (`Some`).
fn reach(point: &str, key: &str) -> Result<Option<Pause>> {
    for fault in armed() {
        if fault.point != point || !matches(&fault.pattern, key) {
            continue;
        }
        if let Action::Trace(file) = &fault.action {
            use std::io::Write;
            let line = format!("{point}@{key}\n");
            // One write of one line with O_APPEND: lines of several processes do not mix.
            let _ = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(file)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            continue;
        }
        eprintln!("fault point {point}@{key}: {:?}", fault.action);
        match &fault.action {
            Action::Kill => kill_self(),
            Action::KillOnce(file) => {
                if std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(file)
                    .is_ok()
                {
                    kill_self();
                }
            }
            Action::Error => {
                bail!(QuiverError::Fault, "fault injected at {point}@{key}");
            }
            Action::Pause(file, limit) => return Ok(Some(Pause::start(file, *limit))),
            Action::Trace(_) => {}
        }
    }
    Ok(None)
}

/// How often a paused point looks whether its file is gone.
const PAUSE_POLL: Duration = Duration::from_millis(10);

/// How long a pause waits unless its action says otherwise.
const PAUSE_LIMIT: Duration = Duration::from_secs(300);

/// Reaches `point` for `key` in blocking code: returns at once unless the point is armed.
pub fn point(point: &str, key: &str) -> Result<()> {
    if let Some(pause) = reach(point, key)? {
        while pause.waiting(point, key, std::path::Path::new(&pause.file).exists())? {
            std::thread::sleep(PAUSE_POLL);
        }
    }
    Ok(())
}

/// Reaches `point` for `key` in async code: returns at once unless the point is armed; a pause
/// waits without holding a thread.
pub async fn point_async(point: &str, key: &str) -> Result<()> {
    if let Some(pause) = reach(point, key)? {
        let exists = || async { tokio::fs::try_exists(&pause.file).await.unwrap_or(false) };
        while pause.waiting(point, key, exists().await)? {
            tokio::time::sleep(PAUSE_POLL).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_points_and_actions() {
        let faults = parse(
            "checkpoint@training/m/v1/epoch-2=kill; read_images=error;\
                            trial_start@*/trial-0002=kill-once:/tmp/x;tfrecord_write=pause:/tmp/p;\
                            job_step=pause:/tmp/q:7;read_images=trace:/tmp/t",
        )
        .unwrap();
        assert_eq!(
            faults,
            vec![
                Fault {
                    point: "checkpoint".into(),
                    pattern: "training/m/v1/epoch-2".into(),
                    action: Action::Kill
                },
                Fault {
                    point: "read_images".into(),
                    pattern: "*".into(),
                    action: Action::Error
                },
                Fault {
                    point: "trial_start".into(),
                    pattern: "*/trial-0002".into(),
                    action: Action::KillOnce("/tmp/x".into())
                },
                Fault {
                    point: "tfrecord_write".into(),
                    pattern: "*".into(),
                    action: Action::Pause("/tmp/p".into(), PAUSE_LIMIT)
                },
                Fault {
                    point: "job_step".into(),
                    pattern: "*".into(),
                    action: Action::Pause("/tmp/q".into(), Duration::from_secs(7))
                },
                Fault {
                    point: "read_images".into(),
                    pattern: "*".into(),
                    action: Action::Trace("/tmp/t".into())
                },
            ]
        );
        for bad in [
            "checkpoint",
            "checkpoint=explode",
            "x=pause:",
            "x=kill-once",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn a_pause_ends_in_an_error_after_its_limit() {
        let dir = std::env::temp_dir().join(format!("quiver-pause-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("paused").to_string_lossy().into_owned();
        let pause = Pause::start(&file, Duration::from_millis(50));
        assert!(
            std::path::Path::new(&file).exists(),
            "the pause is signalled"
        );
        assert!(pause.waiting("p", "k", true).unwrap());
        assert!(
            !pause.waiting("p", "k", false).unwrap(),
            "a removed file ends the pause"
        );
        std::thread::sleep(Duration::from_millis(60));
        let err = pause.waiting("p", "k", true).unwrap_err().to_string();
        assert!(
            err.contains("fault point p@k paused for 50ms") && err.contains(&file),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn patterns_match_with_stars() {
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/bc"));
        assert!(matches("*", ""));
        assert!(matches("exp/*/trial-0002", "exp/trials/trial-0002"));
        assert!(matches("*epoch-2", "training/m/v1/epoch-2"));
        assert!(!matches("*epoch-2", "training/m/v1/epoch-12x"));
        assert!(matches("a*b*c", "aXbYc"));
        assert!(!matches("a*b*c", "aXcYb"));
        assert!(!matches("ab*ba", "aba"));
    }
}
