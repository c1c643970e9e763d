//! The subscription store: one SQLite file (rusqlite, SQLite bundled) that admins can read
//! with `sqlite3`. Each record is a row with its key columns and the whole record as JSON.
//!
//! WAL journal with `synchronous=NORMAL`: every committed write survives a crash of the
//! process (kill -9), and a write is either all there or not at all. Callers write before
//! they act (write-ahead), so after a restart the store says what to refresh.
//!
//! SQLite blocks (a write waits for the disk, a busy lock up to 5 s): [`StoreThread`] runs
//! the store on a thread of its own, so the tokio worker never waits on it. Callers hand
//! it a batch of [`Op`]s and await the commit; a batch is one transaction.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: cannot open the store: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("store: the file was written by a newer stox (schema {0})")]
    Schema(i64),
    #[error("store: the store thread has stopped")]
    Stopped,
}

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(Row),
    Delete(String),
    /// A journalled XMPP -> SIP message (`crate::journal`), written before it is sent.
    JournalPut(JournalRow),
    /// Its SIP outcome is known: the row goes.
    JournalDelete(String),
}

/// One row of the `journal` table: a message stanza taken from the component stream whose
/// SIP outcome is not yet known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRow {
    /// `<cseq> <call-id>`: what a receiver sees as the same request.
    pub id: String,
    pub call_id: String,
    pub cseq: u32,
    pub from_tag: String,
    /// The `<message/>` as XML, to re-send or bounce it after a restart.
    pub stanza: String,
    /// When it was taken (unix ms).
    pub created_ms: u64,
}

/// One stored row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: String,
    pub kind: String,
    pub local_jid: String,
    pub remote: String,
    pub data: String,
}

pub struct Store {
    conn: Mutex<Connection>,
}

const SCHEMA_VERSION: i64 = 1;

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Self::init(conn).map_err(|e| match e {
            StoreError::Sql(source) => StoreError::Open {
                path: path.display().to_string(),
                source,
            },
            e => e,
        })
    }

    pub fn open_in_memory() -> Result<Store, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Store, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Schema(version));
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS subscriptions (
                 id TEXT PRIMARY KEY,
                 kind TEXT NOT NULL,          -- 'xmpp-to-sip' or 'sip-to-xmpp'
                 local_jid TEXT NOT NULL,     -- the XMPP user
                 remote TEXT NOT NULL,        -- the SIP user's URI
                 data TEXT NOT NULL,          -- the whole record, JSON
                 updated_at INTEGER NOT NULL  -- unix seconds
             );
             CREATE INDEX IF NOT EXISTS subscriptions_by_user ON subscriptions (local_jid);
             CREATE TABLE IF NOT EXISTS journal (
                 id TEXT PRIMARY KEY,         -- '<cseq> <call-id>'
                 call_id TEXT NOT NULL,
                 cseq INTEGER NOT NULL,
                 from_tag TEXT NOT NULL,
                 stanza TEXT NOT NULL,        -- the XMPP <message/>
                 created_ms INTEGER NOT NULL  -- unix ms
             );",
        )?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written; keep going.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn put(&self, row: &Row) -> Result<(), StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.conn().execute(
            "INSERT INTO subscriptions (id, kind, local_jid, remote, data, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(id) DO UPDATE SET kind = ?2, local_jid = ?3, remote = ?4, data = ?5,
                 updated_at = ?6",
            params![row.id, row.kind, row.local_jid, row.remote, row.data, now],
        )?;
        Ok(())
    }

    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM subscriptions WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// Applies `ops` in order as one transaction: all of them or none.
    pub fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        apply_ops(&tx, ops)?;
        tx.commit()?;
        Ok(())
    }

    /// Group commit: each batch in its own savepoint (all of it or none, as [`Store::apply`]),
    /// all of them in one transaction, so one commit covers the writes of many callers. A
    /// batch that fails is rolled back alone; a failed commit fails every batch.
    pub fn apply_group(&self, batches: &[&[Op]]) -> Vec<Result<(), StoreError>> {
        let mut conn = self.conn();
        let mut tx = match conn.transaction() {
            Ok(t) => t,
            Err(e) => {
                return batches
                    .iter()
                    .map(|_| Err(StoreError::Sql(clone_err(&e))))
                    .collect()
            }
        };
        let mut results = Vec::with_capacity(batches.len());
        for ops in batches {
            let r = tx.savepoint().map_err(StoreError::from).and_then(|sp| {
                apply_ops(&sp, ops)?;
                sp.commit()?;
                Ok(())
            });
            results.push(r);
        }
        if let Err(e) = tx.commit() {
            return batches
                .iter()
                .map(|_| Err(StoreError::Sql(clone_err(&e))))
                .collect();
        }
        results
    }

    pub fn get(&self, id: &str) -> Result<Option<Row>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, kind, local_jid, remote, data FROM subscriptions WHERE id = ?1",
                params![id],
                row_of,
            )
            .optional()?)
    }

    /// Every journalled message, oldest first.
    pub fn journal(&self) -> Result<Vec<JournalRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, call_id, cseq, from_tag, stanza, created_ms FROM journal
             ORDER BY created_ms, rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(JournalRow {
                id: r.get(0)?,
                call_id: r.get(1)?,
                cseq: r.get(2)?,
                from_tag: r.get(3)?,
                stanza: r.get(4)?,
                created_ms: r.get::<_, i64>(5)?.max(0) as u64,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn all(&self) -> Result<Vec<Row>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT id, kind, local_jid, remote, data FROM subscriptions")?;
        let rows = stmt.query_map([], row_of)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

/// Every op of one batch, inside the caller's transaction or savepoint.
fn apply_ops(tx: &rusqlite::Connection, ops: &[Op]) -> Result<(), StoreError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    for op in ops {
        match op {
            Op::Put(row) => {
                tx.execute(
                    "INSERT INTO subscriptions (id, kind, local_jid, remote, data, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT(id) DO UPDATE SET kind = ?2, local_jid = ?3, remote = ?4,
                             data = ?5, updated_at = ?6",
                    params![row.id, row.kind, row.local_jid, row.remote, row.data, now],
                )?;
            }
            Op::Delete(id) => {
                tx.execute("DELETE FROM subscriptions WHERE id = ?1", params![id])?;
            }
            Op::JournalPut(j) => {
                tx.execute(
                        "INSERT OR REPLACE INTO journal (id, call_id, cseq, from_tag, stanza, created_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![j.id, j.call_id, j.cseq, j.from_tag, j.stanza, j.created_ms as i64],
                    )?;
            }
            Op::JournalDelete(id) => {
                tx.execute("DELETE FROM journal WHERE id = ?1", params![id])?;
            }
        }
    }
    Ok(())
}

/// rusqlite errors are not Clone; a failed commit is reported to every batch it covered.
fn clone_err(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, msg) => {
            rusqlite::Error::SqliteFailure(*code, msg.clone())
        }
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

/// Batches of different callers committed together at most.
const GROUP_COMMIT_MAX: usize = 1024;

type Job = (
    Vec<Op>,
    tokio::sync::oneshot::Sender<Result<(), StoreError>>,
);

/// The store on a thread of its own; cheap to clone. Batches are applied in the order they
/// were handed over.
#[derive(Clone)]
pub struct StoreThread {
    tx: std::sync::mpsc::Sender<Job>,
}

impl StoreThread {
    /// Moves `store` to a new thread `stox-store`; it ends when the last handle is dropped.
    pub fn spawn(store: Store) -> std::io::Result<StoreThread> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("stox-store".into())
            .spawn(move || {
                // Whatever queued up while the last commit ran goes in one transaction.
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    while jobs.len() < GROUP_COMMIT_MAX {
                        match rx.try_recv() {
                            Ok(j) => jobs.push(j),
                            Err(_) => break,
                        }
                    }
                    let batches: Vec<&[Op]> = jobs.iter().map(|(ops, _)| ops.as_slice()).collect();
                    let results = store.apply_group(&batches);
                    for ((_, done), r) in jobs.into_iter().zip(results) {
                        let _ = done.send(r);
                    }
                }
            })?;
        Ok(StoreThread { tx })
    }

    /// Applies `ops` as one transaction on the store thread and waits for the commit
    /// without blocking the runtime.
    pub async fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let (done, result) = tokio::sync::oneshot::channel();
        self.tx.send((ops, done)).map_err(|_| StoreError::Stopped)?;
        result.await.map_err(|_| StoreError::Stopped)?
    }
}

fn row_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        id: r.get(0)?,
        kind: r.get(1)?,
        local_jid: r.get(2)?,
        remote: r.get(3)?,
        data: r.get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, data: &str) -> Row {
        Row {
            id: id.into(),
            kind: "xmpp-to-sip".into(),
            local_jid: "juliet@example.com".into(),
            remote: "sip:romeo@example.net".into(),
            data: data.into(),
        }
    }

    #[test]
    fn rows_are_put_replaced_and_deleted() {
        let s = Store::open_in_memory().unwrap();
        s.put(&row("a", "{}")).unwrap();
        s.put(&row("a", "{\"x\":1}")).unwrap();
        s.put(&row("b", "{}")).unwrap();
        assert_eq!(s.get("a").unwrap().unwrap().data, "{\"x\":1}");
        assert_eq!(s.all().unwrap().len(), 2);
        s.delete("a").unwrap();
        assert_eq!(s.get("a").unwrap(), None);
    }

    #[test]
    fn a_batch_is_one_transaction() {
        let s = Store::open_in_memory().unwrap();
        s.apply(&[
            Op::Put(row("a", "{}")),
            Op::Put(row("b", "{}")),
            Op::Delete("a".into()),
        ])
        .unwrap();
        assert_eq!(s.all().unwrap(), vec![row("b", "{}")]);
        // A batch that fails half-way leaves nothing of itself behind.
        s.conn().execute_batch("CREATE TRIGGER no_c BEFORE INSERT ON subscriptions WHEN NEW.id = 'c' BEGIN SELECT RAISE(ABORT, 'no c'); END;").unwrap();
        assert!(s
            .apply(&[Op::Delete("b".into()), Op::Put(row("c", "{}"))])
            .is_err());
        assert_eq!(s.all().unwrap(), vec![row("b", "{}")]);
    }

    #[tokio::test]
    async fn the_store_thread_commits_and_reports_a_refused_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stox.db");
        let t = StoreThread::spawn(Store::open(&path).unwrap()).unwrap();
        t.apply(vec![Op::Put(row("a", "{}"))]).await.unwrap();
        assert_eq!(
            Store::open(&path).unwrap().all().unwrap(),
            vec![row("a", "{}")]
        );

        // A read-only database (SQLite's own switch: root cannot bypass it).
        let s = Store::open(&path).unwrap();
        s.conn().pragma_update(None, "query_only", true).unwrap();
        let t = StoreThread::spawn(s).unwrap();
        let e = t.apply(vec![Op::Put(row("b", "{}"))]).await.unwrap_err();
        assert!(e.to_string().starts_with("store: "), "{e}");
        assert_eq!(
            Store::open(&path).unwrap().all().unwrap(),
            vec![row("a", "{}")]
        );
    }

    #[test]
    fn journal_rows_survive_reopening_and_subscriptions_do_not_see_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stox.db");
        let j = |id: &str, at: u64| JournalRow {
            id: id.into(),
            call_id: format!("c-{id}"),
            cseq: 7,
            from_tag: "t".into(),
            stanza: "<message/>".into(),
            created_ms: at,
        };
        let s = Store::open(&path).unwrap();
        s.apply(&[
            Op::JournalPut(j("b", 20)),
            Op::JournalPut(j("a", 10)),
            Op::JournalPut(j("c", 30)),
            Op::JournalDelete("c".into()),
        ])
        .unwrap();
        drop(s);
        let again = Store::open(&path).unwrap();
        assert_eq!(again.journal().unwrap(), vec![j("a", 10), j("b", 20)]);
        assert!(again.all().unwrap().is_empty());
    }

    #[test]
    fn a_group_commits_together_and_a_failed_batch_leaves_only_itself_out() {
        let s = Store::open_in_memory().unwrap();
        s.conn().execute_batch("CREATE TRIGGER no_c BEFORE INSERT ON subscriptions WHEN NEW.id = 'c' BEGIN SELECT RAISE(ABORT, 'no c'); END;").unwrap();
        let a = [Op::Put(row("a", "{}"))];
        let bad = [Op::Put(row("b", "{}")), Op::Put(row("c", "{}"))];
        let d = [Op::Put(row("d", "{}"))];
        let results = s.apply_group(&[&a, &bad, &d]);
        assert!(results[0].is_ok() && results[1].is_err() && results[2].is_ok());
        let ids: Vec<String> = s.all().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, vec!["a", "d"], "b went with its batch");
    }

    #[tokio::test]
    async fn callers_of_the_store_thread_each_get_their_own_answer() {
        let t = StoreThread::spawn(Store::open_in_memory().unwrap()).unwrap();
        let writes = (0..200).map(|i| {
            let t = t.clone();
            async move { t.apply(vec![Op::Put(row(&format!("r{i}"), "{}"))]).await }
        });
        for r in futures::future::join_all(writes).await {
            r.unwrap();
        }
    }

    #[test]
    fn a_file_store_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/stox.db");
        Store::open(&path).unwrap().put(&row("a", "{}")).unwrap();
        let again = Store::open(&path).unwrap();
        assert_eq!(again.all().unwrap(), vec![row("a", "{}")]);
    }

    #[test]
    fn an_unusable_path_is_one_line_naming_it() {
        let e = Store::open(Path::new("/proc/stox/cannot.db"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("/proc/stox/cannot.db: cannot open the store"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1);
    }
}
