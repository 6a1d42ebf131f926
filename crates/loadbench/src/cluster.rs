//! The lab under test: one `dutlab serve` on SQLite or PostgreSQL, or several on one private
//! PostgreSQL server (the first leads the database, the others start with `--follow`).
//!
//! Invariants:
//! - The PostgreSQL server is the benchmark's own (initdb into a temporary directory, a unix
//!   socket, no TCP listener) and runs with PostgreSQL's default durability (fsync at commit),
//!   as a lab's server does; it outlives every controller and is stopped last.
//! - Every controller has its own data directory and port; followers share the first one's
//!   admin token (the database holds the tokens).

use crate::server::{Controller, Join};
use anyhow::{Context, bail};
use clap::ValueEnum;
use std::path::Path;
use testkit::postgres::{Durability, Postgres};

/// Where the controllers keep the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Store {
    /// SQLite in the (first) controller's data directory.
    Sqlite,
    /// A private PostgreSQL server started for the run.
    Postgres,
}

impl Store {
    pub fn name(self) -> &'static str {
        match self {
            Store::Sqlite => "sqlite",
            Store::Postgres => "postgres",
        }
    }
}

pub struct Lab {
    /// In start order: the first led the database when the run began.
    pub controllers: Vec<Controller>,
    /// Dropped after the controllers (fields drop in order).
    _postgres: Option<Postgres>,
}

impl Lab {
    pub async fn start(
        dutlab: &Path,
        extra: &[String],
        tls: bool,
        store: Store,
        count: usize,
    ) -> anyhow::Result<Lab> {
        if count == 0 {
            bail!("--controllers must be at least 1");
        }
        if count > 1 && store != Store::Postgres {
            bail!("--controllers {count} shares one database: it needs --store postgres");
        }
        if count > 1 && tls {
            bail!("--tls with --controllers above 1 is not supported (each lab PKI is per run)");
        }
        let (postgres, args) = match store {
            Store::Sqlite => (None, extra.to_vec()),
            Store::Postgres => {
                let server = tokio::task::spawn_blocking(|| {
                    let server = Postgres::start_with(Durability::Fsync)?;
                    let url = server.create_database("lab")?;
                    anyhow::Ok((server, url))
                })
                .await
                .context("the PostgreSQL start task")?
                .context(
                    "cannot start a private PostgreSQL server (Debian: apt install postgresql)",
                )?;
                let mut args = vec!["--database".to_owned(), server.1];
                args.extend_from_slice(extra);
                (Some(server.0), args)
            }
        };
        let first = Controller::start_as(dutlab, &args, tls, Join::First).await?;
        let admin = first.admin.clone();
        let mut controllers = vec![first];
        for _ in 1..count {
            let join = Join::Follower {
                admin: admin.clone(),
            };
            controllers.push(Controller::start_as(dutlab, &args, tls, join).await?);
        }
        Ok(Lab {
            controllers,
            _postgres: postgres,
        })
    }

    /// Makes a token through the first controller and waits until every controller takes it
    /// (followers learn tokens from the leader's events).
    pub async fn token(&self, name: &str, role: &str) -> anyhow::Result<String> {
        let token = self.controllers[0].token(name, role).await?;
        wait_known(&self.controllers[0].http, &self.whoami_urls(), &token).await?;
        Ok(token)
    }

    /// `/api/v1/whoami` of every controller.
    pub fn whoami_urls(&self) -> Vec<String> {
        self.controllers
            .iter()
            .map(|c| c.url("/api/v1/whoami"))
            .collect()
    }

    /// The controller that led the database when the run began.
    pub fn first(&mut self) -> &mut Controller {
        &mut self.controllers[0]
    }

    /// Stops every controller; answers their log lines (each prefixed with its index when
    /// there are several) and the CPU seconds they used.
    pub fn stop(&mut self) -> (Vec<String>, f64) {
        let several = self.controllers.len() > 1;
        let mut lines = Vec::new();
        let mut cpu = 0.0;
        for (i, c) in self.controllers.iter_mut().enumerate() {
            let (log, secs) = c.stop();
            cpu += secs;
            lines.extend(log.into_iter().map(|l| {
                if several {
                    format!("[controller {i}] {l}")
                } else {
                    l
                }
            }));
        }
        (lines, cpu)
    }

    /// CPU seconds used so far by the controllers still running.
    pub fn cpu(&self) -> f64 {
        self.controllers.iter().map(Controller::cpu).sum()
    }
}

/// Waits until each of `whoami` answers 200 to `token` (30 s at most).
pub async fn wait_known(
    http: &reqwest::Client,
    whoami: &[String],
    token: &str,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for url in whoami {
        loop {
            let answer = http.get(url).bearer_auth(token).send().await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!("{url} did not take a new token within 30 s");
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    Ok(())
}
