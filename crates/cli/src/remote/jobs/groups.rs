//! MultiNode groups on the command line: `ID.N` names sub-job N of group ID (LAVA's
//! spelling), `job show ID` of a group shows every sub-job, and following a group follows
//! every sub-job's log, each line prefixed by its role.
//!
//! Invariants: `ID.N` is resolved by asking the controller for job `ID + N` and checking
//! that its group is `ID` at index `N` (ids of a group are consecutive), so a wrong `ID.N`
//! is an error, never another job. A group's outcome is its worst sub-job's (the highest
//! exit code of `proto::Outcome::exit_code`).

use super::*;
use proto::Outcome;
use proto::api::JobGroup;
use std::sync::{Arc, Mutex};

/// A job named on the command line: `ID` or `ID.N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRef {
    pub id: u64,
    pub sub: Option<u32>,
}

impl std::str::FromStr for JobRef {
    type Err = String;
    fn from_str(s: &str) -> Result<JobRef, String> {
        let bad = || format!("{s:?} is not a job id (a number, or ID.N for sub-job N of group ID)");
        match s.split_once('.') {
            None => Ok(JobRef {
                id: s.parse().map_err(|_| bad())?,
                sub: None,
            }),
            Some((id, n)) => Ok(JobRef {
                id: id.parse().map_err(|_| bad())?,
                sub: Some(n.parse().map_err(|_| bad())?),
            }),
        }
    }
}

impl std::fmt::Display for JobRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.sub {
            None => write!(f, "{}", self.id),
            Some(n) => write!(f, "{}.{n}", self.id),
        }
    }
}

/// The job id `r` names (checked against its group for `ID.N`).
pub async fn resolve(client: &Client, r: JobRef) -> anyhow::Result<JobId> {
    let Some(n) = r.sub else {
        return Ok(JobId(r.id));
    };
    let id = JobId(r.id.saturating_add(u64::from(n)));
    let job = client
        .job(id)
        .await
        .with_context(|| format!("cannot find job {r}"))?;
    match &job.group {
        Some(g) if g.id == JobId(r.id) && g.index == n => Ok(id),
        _ => Err(Exit::new(
            exit::USAGE,
            format!("job {r}: job {} has no sub-job {n}", r.id),
        )
        .into()),
    }
}

/// `ID.N` of a sub-job.
pub fn name(g: &JobGroup, index: usize) -> String {
    format!("{}.{index}", g.id)
}

/// The worst outcome among finished sub-jobs (`None` until every one finished).
pub fn worst(jobs: &[JobView]) -> Option<Outcome> {
    let outcomes: Option<Vec<Outcome>> = jobs.iter().map(|j| j.outcome).collect();
    outcomes?.into_iter().max_by_key(|o| o.exit_code())
}

/// Every sub-job of `g`, by index.
pub async fn members(client: &Client, g: &JobGroup) -> anyhow::Result<Vec<JobView>> {
    let mut out = Vec::with_capacity(g.jobs.len());
    for m in &g.jobs {
        out.push(
            client
                .job(m.job)
                .await
                .with_context(|| format!("cannot show job {}", m.job))?,
        );
    }
    Ok(out)
}

/// `job show ID` of a group: the group, then every sub-job.
pub fn describe_group(g: &JobGroup, jobs: &[JobView], now: proto::Millis) -> String {
    let mut text = format!(
        "group {}: {} sub-jobs, outcome {}\n",
        g.id,
        jobs.len(),
        worst(jobs).map_or_else(|| "(running)".to_owned(), |o| o.to_string())
    );
    for (i, j) in jobs.iter().enumerate() {
        let role = j.group.as_ref().map_or("", |g| g.role.as_str());
        text.push_str(&format!(
            "\nsub-job {} (role {}, job {}):\n",
            name(g, i),
            runner::report::printable(role),
            j.id
        ));
        text.push_str(&describe(j, now));
    }
    text
}

/// The line `describe` shows for a sub-job.
pub fn group_field(g: &JobGroup) -> String {
    let all: Vec<String> = g
        .jobs
        .iter()
        .enumerate()
        .map(|(i, m)| format!("{} {}", name(g, i), runner::report::printable(&m.role)))
        .collect();
    format!(
        "{} (role {}); group {}: {}",
        name(g, g.index as usize),
        runner::report::printable(&g.role),
        g.id,
        all.join(", ")
    )
}

/// Lines to one shared output, each prefixed (`[role] `); whole lines only, so sub-jobs
/// followed at once do not mix within a line.
struct Prefixed {
    prefix: String,
    line: Vec<u8>,
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl Write for Prefixed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            self.line.push(b);
            if b == b'\n' {
                self.flush_line()?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Prefixed {
    fn flush_line(&mut self) -> std::io::Result<()> {
        if self.line.is_empty() {
            return Ok(());
        }
        let mut out = self
            .out
            .lock()
            .map_err(|_| std::io::Error::other("output lock poisoned"))?;
        out.write_all(self.prefix.as_bytes())?;
        out.write_all(&self.line)?;
        if self.line.last() != Some(&b'\n') {
            out.write_all(b"\n")?;
        }
        out.flush()?;
        self.line.clear();
        Ok(())
    }
}

impl Drop for Prefixed {
    fn drop(&mut self) {
        let _ = self.flush_line();
    }
}

/// Follows every sub-job of `g` at once, each line prefixed by `[ID.N role]`; the final
/// views by index, or `None` when Ctrl-C stopped it.
pub async fn follow_group(
    client: &Client,
    g: &JobGroup,
    out: Box<dyn Write + Send>,
) -> anyhow::Result<Option<Vec<JobView>>> {
    let out = Arc::new(Mutex::new(out));
    let followers = g.jobs.iter().enumerate().map(|(i, m)| {
        let sink = LogSink::People(LogView::new(Box::new(Prefixed {
            prefix: format!("[{} {}] ", name(g, i), runner::report::printable(&m.role)),
            line: Vec::new(),
            out: out.clone(),
        })));
        follow(client, m.job, sink)
    });
    let mut ends = Vec::with_capacity(g.jobs.len());
    for end in futures_util::future::join_all(followers).await {
        match end? {
            Some(end) => ends.push(end),
            None => return Ok(None),
        }
    }
    Ok(Some(ends))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_refs_are_ids_or_sub_jobs() {
        assert_eq!("42".parse(), Ok(JobRef { id: 42, sub: None }));
        assert_eq!(
            "42.1".parse(),
            Ok(JobRef {
                id: 42,
                sub: Some(1)
            })
        );
        assert!("42.".parse::<JobRef>().is_err());
        assert!("x.1".parse::<JobRef>().is_err());
        assert_eq!(
            JobRef {
                id: 7,
                sub: Some(0)
            }
            .to_string(),
            "7.0"
        );
    }
}
