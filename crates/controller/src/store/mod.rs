//! The database: principals (users) and their groups, tokens, jobs (definition, owner,
//! report) and the scheduler's event log.
//!
//! One SQL text serves SQLite and PostgreSQL (`$1` placeholders, `BIGINT`/`TEXT` columns only)
//! through sqlx's `Any` driver, with runtime queries (no compile-time macros).
//!
//! Invariants:
//! - The scheduler's state is never stored directly: it is rebuilt by replaying `events` in
//!   `seq` order. Every state change is committed together with its events in one transaction
//!   ([`Store::commit`]) before anyone is told about it.
//! - Token secrets are never stored: only their SHA-256 (tokens are 160-bit random strings, so
//!   a fast hash is enough; there is nothing to brute-force).
//! - The schema moves forward only, by [`schema`]'s migrations; the version reached is in
//!   `meta`, and a database newer than this build is refused ([`StoreError::TooNew`]).
//! - One `dutlab serve` at a time leads a database: [`hold`] takes PostgreSQL's advisory
//!   lock (a second controller is refused, waits as a standby, or follows: it opens the
//!   database without migrating it, [`Store::open_following`], and writes only forwarded
//!   commands, log records, tokens and users).
//! - Principal names are unique (a `UNIQUE` column) and a principal's id never changes; every
//!   token belongs to one principal and every job is owned by one (`jobs.owner_id`).
//!   `jobs.owner` keeps the owner's name as it was at submit, for people reading the table.
//! - SQLite runs in WAL mode with a busy timeout; the dispatcher is the only writer of jobs and
//!   events. With [`SqliteSync::Full`] (the default) every commit is on disk (the WAL is synced)
//!   before it returns, so nothing acknowledged is lost to a power failure; `Normal` syncs only
//!   at checkpoints (a crash of the machine may lose the last commits, never corrupt).

use proto::admin::{AuditAction, AuditEntry};
use proto::api::{TokenView, UserOrigin};
use proto::{GroupName, JobId, JobReport, Millis, PrincipalId, Visibility};
use rows::{as_i64, as_u64, job_row, job_rows, stored_visibility, token_row};
use scheduler::Event;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor, Row};
use std::path::Path;

pub mod agent_links;
pub mod artifact_chunks;
pub mod commands;
pub mod hold;
pub mod log_records;
pub mod multinode_groups;
mod rows;
pub mod schema;

/// Why the database failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("database holds a bad {what}: {reason}")]
    Corrupt { what: &'static str, reason: String },
    #[error(
        "database schema version {found} is newer than this dutlab knows (version {known}): \
         a newer dutlab has used this database; run that version (a database is never \
         migrated backwards)"
    )]
    TooNew {
        found: schema::Version,
        known: schema::Version,
    },
    #[error(
        "another dutlab serve is using database {url} ({holder}); one controller leads a \
         database at a time: stop it, or start this one with --standby to wait and take over \
         when it stops, or with --follow to serve beside it"
    )]
    Held { url: String, holder: String },
    #[error(
        "database schema version {found} differs from this dutlab's (version {known}): a \
         follower neither migrates a database nor works on another version; run the same \
         dutlab as the leader"
    )]
    OtherVersion {
        found: schema::Version,
        known: schema::Version,
    },
}

/// A principal as stored, with its groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPrincipal {
    pub id: PrincipalId,
    pub name: String,
    pub created_at: Millis,
    pub groups: Vec<GroupName>,
}

/// Whether a group membership is to exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    Member,
    NotMember,
}

/// A token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub view: TokenView,
    pub hash: String,
}

/// A job's own row: what the scheduler does not keep.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub id: JobId,
    pub name: String,
    pub owner: PrincipalId,
    /// The owner's name at submit (names never change).
    pub owner_name: String,
    pub visibility: Visibility,
    pub file_name: String,
    pub definition: String,
    pub warnings: Vec<String>,
    /// Digests of the artifacts the job references (written with the job; not read back).
    pub artifacts: Vec<String>,
    /// Its MultiNode group, for a sub-job (table `job_groups`).
    pub group: Option<GroupRow>,
}

/// A sub-job's membership: group (sub-job 0's id), index, role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    pub group: JobId,
    pub index: u32,
    pub role: String,
}

/// What one commit writes besides events.
#[derive(Debug, Default)]
pub struct Change<'a> {
    pub new_job: Option<&'a JobRow>,
    /// More new jobs (the other sub-jobs of a group submitted with `new_job`).
    pub more_jobs: &'a [JobRow],
    /// Final reports with the sequence number of each job's last log record.
    pub reports: Vec<(JobId, &'a JobReport, u64)>,
    /// The forwarded command these events answer (marked done with them: [`commands`]).
    pub command: Option<i64>,
    /// Admin actions, numbered by the dispatcher.
    pub audit: &'a [AuditEntry],
}

/// SQLite's `synchronous` setting (PostgreSQL always syncs its commits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqliteSync {
    /// Every commit syncs the WAL (durable before it is acknowledged).
    #[default]
    Full,
    /// The WAL is synced at checkpoints only.
    Normal,
}

impl SqliteSync {
    fn pragma(self) -> &'static str {
        match self {
            SqliteSync::Full => "PRAGMA synchronous = FULL",
            SqliteSync::Normal => "PRAGMA synchronous = NORMAL",
        }
    }
}

/// How often making a principal is tried when concurrent inserts took its id.
const PRINCIPAL_ATTEMPTS: u32 = 32;

/// Which database a store works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend of a database URL (`postgres://` or `postgresql://`; anything else is
    /// SQLite's).
    pub fn of(url: &str) -> Backend {
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Opens (and creates) the database. `url` is `sqlite://PATH` or `postgres://...`.
    pub async fn open(url: &str, sync: SqliteSync) -> Result<Store, StoreError> {
        Store::connect(url, sync, schema::Migrate::Forward).await
    }

    /// Opens a database another controller leads: never migrates, and refuses a schema of
    /// another version ([`StoreError::OtherVersion`]).
    pub async fn open_following(url: &str) -> Result<Store, StoreError> {
        Store::connect(url, SqliteSync::Full, schema::Migrate::Never).await
    }

    async fn connect(
        url: &str,
        sync: SqliteSync,
        migrate: schema::Migrate,
    ) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let connect = |source| StoreError::Connect {
            url: redact(url),
            source,
        };
        let mut options = AnyPoolOptions::new().max_connections(if sqlite { 4 } else { 8 });
        if sqlite {
            options = options.after_connect(move |conn, _meta| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    conn.execute(sync.pragma()).await?;
                    Ok(())
                })
            });
        }
        let pool = options.connect(url).await.map_err(connect)?;
        match migrate {
            schema::Migrate::Forward => {
                schema::migrate(&pool).await?;
            }
            schema::Migrate::Never => {
                let found = schema::version(&pool).await?;
                if found != schema::LATEST {
                    return Err(StoreError::OtherVersion {
                        found,
                        known: schema::LATEST,
                    });
                }
            }
        }
        Ok(Store {
            pool,
            backend: Backend::of(url),
        })
    }

    /// The database this store works on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The SQLite URL of a data directory.
    pub fn sqlite_url(data_dir: &Path) -> String {
        format!("sqlite://{}?mode=rwc", data_dir.join("dutlab.db").display())
    }

    pub async fn tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        let rows = sqlx::query(
            "SELECT t.id, t.name, t.role, t.agent, t.hash, t.created_at, t.revoked_at, t.principal, p.name AS user_name
             FROM tokens t JOIN principals p ON p.id = t.principal ORDER BY t.created_at, t.id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_row).collect()
    }

    pub async fn insert_token(&self, token: &StoredToken) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tokens (id, name, role, agent, hash, created_at, revoked_at, principal) VALUES ($1, $2, $3, $4, $5, $6, NULL, $7)",
        )
        .bind(token.view.id.clone())
        .bind(token.view.name.clone())
        .bind(token.view.role.as_str())
        .bind(token.view.agent.clone())
        .bind(token.hash.clone())
        .bind(as_i64(token.view.created_at.0))
        .bind(as_i64(token.view.principal.0))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks a token revoked; false when there is no such token.
    pub async fn revoke_token(&self, id: &str, at: Millis) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(as_i64(at.0))
                .bind(id.to_owned())
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every principal with its groups, in id order.
    pub async fn principals(&self) -> Result<Vec<StoredPrincipal>, StoreError> {
        let rows = sqlx::query("SELECT id, name, created_at FROM principals ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        let mut principals = Vec::with_capacity(rows.len());
        for row in &rows {
            principals.push(StoredPrincipal {
                id: PrincipalId(as_u64(row.try_get("id")?)),
                name: row.try_get("name")?,
                created_at: Millis(as_u64(row.try_get("created_at")?)),
                groups: Vec::new(),
            });
        }
        let rows = sqlx::query("SELECT principal, grp FROM memberships ORDER BY principal, grp")
            .fetch_all(&self.pool)
            .await?;
        for row in &rows {
            let id = PrincipalId(as_u64(row.try_get("principal")?));
            let text: String = row.try_get("grp")?;
            let group = GroupName::new(&text).map_err(|e| StoreError::Corrupt {
                what: "group membership",
                reason: format!("principal {id}: {e}"),
            })?;
            if let Some(p) = principals.iter_mut().find(|p| p.id == id) {
                p.groups.push(group);
            }
        }
        Ok(principals)
    }

    /// The principal named `name`, made (with the next id) when there is none.
    pub async fn principal_named(
        &self,
        name: &str,
        at: Millis,
    ) -> Result<(StoredPrincipal, UserOrigin), StoreError> {
        let find = || async {
            let found = self.principals().await?;
            Ok::<_, StoreError>(found.into_iter().find(|p| p.name == name))
        };
        if let Some(p) = find().await? {
            return Ok((p, UserOrigin::Existing));
        }
        // One statement: the id is taken and the row written atomically. A concurrent insert
        // of the same name fails here, and so (on PostgreSQL, where two such statements can
        // read the same MAX) does one of another name that took the same id: the lookup
        // settles the first case, another attempt with the next id the second.
        let mut attempts = 0;
        loop {
            let inserted = sqlx::query(
                "INSERT INTO principals (id, name, created_at)
                 SELECT COALESCE(MAX(id), 0) + 1, $1, $2 FROM principals",
            )
            .bind(name.to_owned())
            .bind(as_i64(at.0))
            .execute(&self.pool)
            .await;
            attempts += 1;
            return match (inserted, find().await?) {
                (Ok(_), Some(p)) => Ok((p, UserOrigin::Created)),
                (Err(_), Some(p)) => Ok((p, UserOrigin::Existing)),
                (Err(_), None) if attempts < PRINCIPAL_ATTEMPTS => continue,
                (Err(e), None) => Err(e.into()),
                (Ok(_), None) => Err(StoreError::Corrupt {
                    what: "principal",
                    reason: format!("{name:?} is missing right after it was inserted"),
                }),
            };
        }
    }

    /// Makes `principal` a member of `group` or not; false when it already was as asked.
    pub async fn set_membership(
        &self,
        principal: PrincipalId,
        group: &GroupName,
        membership: Membership,
    ) -> Result<bool, StoreError> {
        let done = match membership {
            Membership::Member => sqlx::query(
                "INSERT INTO memberships (principal, grp) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(as_i64(principal.0))
            .bind(group.as_str().to_owned())
            .execute(&self.pool)
            .await?,
            Membership::NotMember => {
                sqlx::query("DELETE FROM memberships WHERE principal = $1 AND grp = $2")
                    .bind(as_i64(principal.0))
                    .bind(group.as_str().to_owned())
                    .execute(&self.pool)
                    .await?
            }
        };
        Ok(done.rows_affected() == 1)
    }

    /// Every stored event, in order.
    pub async fn events(&self) -> Result<Vec<(u64, Event)>, StoreError> {
        let rows = sqlx::query("SELECT seq, body FROM events ORDER BY seq")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.try_get("seq")?;
                let body: String = row.try_get("body")?;
                let event = serde_json::from_str(&body).map_err(|e| StoreError::Corrupt {
                    what: "event",
                    reason: format!("event {seq}: {e}"),
                })?;
                Ok((as_u64(seq), event))
            })
            .collect()
    }

    /// Every job row, in id order.
    pub async fn jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        let rows = sqlx::query(job_rows!("ORDER BY j.id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_row).collect()
    }

    pub async fn definition(&self, job: JobId) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT definition FROM jobs WHERE id = $1")
            .bind(as_i64(job.0))
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => Some(row.try_get("definition")?),
            None => None,
        })
    }

    /// The file name a job was submitted as and the artifacts it references.
    pub async fn job_source(
        &self,
        job: JobId,
    ) -> Result<Option<(String, Vec<String>)>, StoreError> {
        let Some(row) = sqlx::query("SELECT file_name FROM jobs WHERE id = $1")
            .bind(as_i64(job.0))
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let file_name: String = row.try_get("file_name")?;
        let rows = sqlx::query("SELECT sha256 FROM job_artifacts WHERE job = $1 ORDER BY sha256")
            .bind(as_i64(job.0))
            .fetch_all(&self.pool)
            .await?;
        let artifacts = rows
            .iter()
            .map(|r| r.try_get("sha256"))
            .collect::<Result<Vec<String>, _>>()?;
        Ok(Some((file_name, artifacts)))
    }

    /// The stored report and the sequence number of the job's last log record.
    pub async fn report(&self, job: JobId) -> Result<Option<(JobReport, u64)>, StoreError> {
        let row = sqlx::query("SELECT report, last_seq FROM jobs WHERE id = $1")
            .bind(as_i64(job.0))
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let report: Option<String> = row.try_get("report")?;
        let last: Option<i64> = row.try_get("last_seq")?;
        match report {
            Some(text) => {
                let report = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                    what: "report",
                    reason: format!("job {job}: {e}"),
                })?;
                Ok(Some((report, last.map_or(0, as_u64))))
            }
            None => Ok(None),
        }
    }

    /// Records a stored artifact (once) and that `principal` uploaded it.
    pub async fn insert_artifact(
        &self,
        sha256: &str,
        size: u64,
        principal: &str,
        at: Millis,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO artifacts (sha256, size, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(sha256.to_owned())
        .bind(as_i64(size))
        .bind(as_i64(at.0))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO artifact_uploaders (sha256, principal, uploaded_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(sha256.to_owned())
        .bind(principal.to_owned())
        .bind(as_i64(at.0))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The size of a stored artifact, if it is stored.
    pub async fn artifact_size(&self, sha256: &str) -> Result<Option<u64>, StoreError> {
        let row = sqlx::query("SELECT size FROM artifacts WHERE sha256 = $1")
            .bind(sha256.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Some(as_u64(row.try_get("size")?))),
            None => Ok(None),
        }
    }

    /// Bytes of the distinct artifacts `principal` uploaded (their artifact quota usage).
    pub async fn artifact_bytes_of(&self, principal: &str) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(a.size), 0) AS BIGINT) AS total FROM artifacts a \
             JOIN artifact_uploaders u ON u.sha256 = a.sha256 WHERE u.principal = $1",
        )
        .bind(principal.to_owned())
        .fetch_one(&self.pool)
        .await?;
        Ok(as_u64(row.try_get("total")?))
    }

    /// Whether `principal` uploaded the artifact.
    pub async fn uploaded_by(&self, sha256: &str, principal: &str) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT 1 AS one FROM artifact_uploaders WHERE sha256 = $1 AND principal = $2",
        )
        .bind(sha256.to_owned())
        .bind(principal.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// The newest `limit` jobs that reference the artifact.
    pub async fn artifact_jobs(&self, sha256: &str, limit: u64) -> Result<Vec<JobId>, StoreError> {
        let rows = sqlx::query(
            "SELECT job FROM job_artifacts WHERE sha256 = $1 ORDER BY job DESC LIMIT $2",
        )
        .bind(sha256.to_owned())
        .bind(as_i64(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(JobId(as_u64(r.try_get("job")?))))
            .collect()
    }

    /// Whether `job` references the artifact.
    pub async fn job_references(&self, job: JobId, sha256: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 AS one FROM job_artifacts WHERE job = $1 AND sha256 = $2")
            .bind(as_i64(job.0))
            .bind(sha256.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// The newest `limit` audit entries, newest first.
    pub async fn audit(&self, limit: u64) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at, actor, principal, action, target, detail, remote FROM audit
             ORDER BY seq DESC LIMIT $1",
        )
        .bind(as_i64(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let action: String = row.try_get("action")?;
                Ok(AuditEntry {
                    seq: as_u64(row.try_get("seq")?),
                    at: Millis(as_u64(row.try_get("at")?)),
                    actor: row.try_get("actor")?,
                    principal: PrincipalId(as_u64(row.try_get("principal")?)),
                    action: AuditAction::parse(&action).ok_or_else(|| StoreError::Corrupt {
                        what: "audit action",
                        reason: action.clone(),
                    })?,
                    target: row.try_get("target")?,
                    detail: row.try_get("detail")?,
                    remote: row.try_get("remote")?,
                })
            })
            .collect()
    }

    /// The highest audit number so far (0: none).
    pub async fn last_audit_seq(&self) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT CAST(COALESCE(MAX(seq), 0) AS BIGINT) AS last FROM audit")
            .fetch_one(&self.pool)
            .await?;
        Ok(as_u64(row.try_get("last")?))
    }

    /// Commits events (numbered from `first_seq`) and the change in one transaction.
    pub async fn commit(
        &self,
        first_seq: u64,
        events: &[Event],
        change: Change<'_>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for job in change.new_job.into_iter().chain(change.more_jobs) {
            if let Some(g) = &job.group {
                sqlx::query("INSERT INTO job_groups (job, grp, idx, role) VALUES ($1, $2, $3, $4)")
                    .bind(as_i64(job.id.0))
                    .bind(as_i64(g.group.0))
                    .bind(i64::from(g.index))
                    .bind(g.role.clone())
                    .execute(&mut *tx)
                    .await?;
            }
            let warnings =
                serde_json::to_string(&job.warnings).map_err(|e| StoreError::Corrupt {
                    what: "warning list",
                    reason: e.to_string(),
                })?;
            sqlx::query(
                "INSERT INTO jobs (id, name, owner, owner_id, visibility, file_name, definition, warnings, report, last_seq)
                 VALUES ($1, $2, $3, $8, $4, $5, $6, $7, NULL, NULL)",
            )
            .bind(as_i64(job.id.0))
            .bind(job.name.clone())
            .bind(job.owner_name.clone())
            .bind(stored_visibility(&job.visibility))
            .bind(job.file_name.clone())
            .bind(job.definition.clone())
            .bind(warnings)
            .bind(as_i64(job.owner.0))
            .execute(&mut *tx)
            .await?;
            for sha256 in &job.artifacts {
                sqlx::query(
                    "INSERT INTO job_artifacts (job, sha256) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(as_i64(job.id.0))
                .bind(sha256.clone())
                .execute(&mut *tx)
                .await?;
            }
        }
        for (job, report, last_seq) in change.reports {
            let text = serde_json::to_string(report).map_err(|e| StoreError::Corrupt {
                what: "report",
                reason: e.to_string(),
            })?;
            sqlx::query("UPDATE jobs SET report = $1, last_seq = $2 WHERE id = $3")
                .bind(text)
                .bind(as_i64(last_seq))
                .bind(as_i64(job.0))
                .execute(&mut *tx)
                .await?;
        }
        if let Some(id) = change.command {
            sqlx::query("UPDATE commands SET done = 1 WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        for entry in change.audit {
            sqlx::query(
                "INSERT INTO audit (seq, at, actor, principal, action, target, detail, remote)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(as_i64(entry.seq))
            .bind(as_i64(entry.at.0))
            .bind(entry.actor.clone())
            .bind(as_i64(entry.principal.0))
            .bind(entry.action.as_str())
            .bind(entry.target.clone())
            .bind(entry.detail.clone())
            .bind(entry.remote.clone())
            .execute(&mut *tx)
            .await?;
        }
        for (i, event) in events.iter().enumerate() {
            let body = serde_json::to_string(event).map_err(|e| StoreError::Corrupt {
                what: "event",
                reason: e.to_string(),
            })?;
            sqlx::query("INSERT INTO events (seq, body) VALUES ($1, $2)")
                .bind(as_i64(first_seq + i as u64))
                .bind(body)
                .execute(&mut *tx)
                .await?;
        }
        if !events.is_empty() {
            let last = first_seq + events.len() as u64 - 1;
            self.notify(&mut tx, commands::EVENT_CHANNEL, &last.to_string())
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// A database URL with any password removed, for messages: the one in the user part
/// (`user:***@`) and a `password=` parameter.
pub fn redact(url: &str) -> String {
    let mut text = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme && url[scheme + 3..at].contains(':') => {
            let user = url[scheme + 3..at].split(':').next().unwrap_or("");
            format!("{}://{}:***@{}", &url[..scheme], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    };
    if let Some(start) = text.find("password=").map(|i| i + "password=".len()) {
        let end = text[start..].find('&').map_or(text.len(), |i| start + i);
        text.replace_range(start..end, "***");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://lab:s3cret@db/dutlab"),
            "postgres://lab:***@db/dutlab"
        );
        assert_eq!(
            redact("postgres://lab@localhost/dutlab?host=/run/pg"),
            "postgres://lab@localhost/dutlab?host=/run/pg"
        );
        assert_eq!(
            redact("postgres://db/dutlab?user=lab&password=s3cret&sslmode=require"),
            "postgres://db/dutlab?user=lab&password=***&sslmode=require"
        );
        assert_eq!(
            redact("sqlite:///var/lib/dutlab/dutlab.db"),
            "sqlite:///var/lib/dutlab/dutlab.db"
        );
    }
}
