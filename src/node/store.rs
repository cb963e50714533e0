//! The node's durable state: what must outlive a restart or a crash of the process, such as
//! registrations (user number -> contact, serving node, expiry), dynamic regrouping and the
//! stun/kill state of users.
//!
//! One [`Store`] per node wraps one file, an append-only journal of row writes that is replayed
//! into memory at open and compacted when mostly history (see [`crate::node::journal`]). Callers
//! declare typed tables as constants ([`Table`]) and keep string keys (user numbers, group
//! numbers); values are JSON so that a field added later with `#[serde(default)]` still reads rows
//! written before it. Every committed row is held in memory (a few hundred bytes per user).
//!
//! # Writes: group commit
//!
//! [`Store::put`] and [`Store::remove`] serialize on the caller's thread and queue the row for a
//! writer thread; they do not wait for the disk. The writer commits everything queued within
//! [`StoreOptions::commit_interval`] of the first queued row (sooner once
//! [`StoreOptions::max_batch`] rows are queued, or when [`Store::flush`] asks) as one append to
//! the journal: one `fdatasync` per batch, not per write. A row written again before its batch starts
//! replaces the queued one, so a burst of re-REGISTERs from one user costs one row.
//!
//! # Reads: read-your-writes
//!
//! [`Store::get`] and [`Store::scan`] see every accepted write at once, committed or not: they
//! consult the queued rows and the batch being committed before the committed data. What is
//! visible is therefore not always durable yet; [`Store::flush`] and [`Store::put_durable`] say
//! when it is.
//!
//! # Back-pressure
//!
//! At most [`StoreOptions::queue_capacity`] distinct rows wait for the next batch (plus the batch
//! being committed, so memory stays under about twice that). When the queue is full, a write of a
//! new row blocks until the writer makes room, for at most [`StoreOptions::enqueue_timeout`],
//! then fails with [`StoreError::Backlogged`] without queuing anything. A write to a row already
//! queued never blocks (it replaces the queued value). With a healthy disk the queue never fills.
//!
//! # Crash window
//!
//! A batch is durable once its `fdatasync` returned; a crash during one leaves a torn tail that
//! the next open cuts off, so the file holds exactly the batches committed before the crash.
//! A kill therefore loses the writes accepted but not yet committed: about the last
//! `commit_interval` plus the duration of one commit, more if the disk was backlogged. Whatever
//! [`Store::flush`] or [`Store::put_durable`] returned `Ok` for survives.
//!
//! # Shutdown
//!
//! Dropping the last handle commits whatever is queued and joins the writer (blocking the dropping
//! thread for one commit). [`Store::close`] does the same explicitly and reports a failure.
//!
//! # From async code
//!
//! `put`, `remove`, `get` and `scan` are short and may be called on a tokio worker (`put` and
//! `remove` block only while the queue is full, at most `enqueue_timeout`). `flush`,
//! `put_durable`, `close` and the last drop wait for a commit: in async code, call them from
//! `spawn_blocking` (or at shutdown, where a few milliseconds of blocking do no harm).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::node::journal::{Journal, Tables};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// First wait before the writer retries a batch whose commit failed; doubles up to
/// [`MAX_RETRY_DELAY`] while failures go on, so a dead disk is not hammered nor the log flooded.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Longest wait between two attempts to commit a failed batch.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Tuning of a [`Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// How long the writer gathers writes after the first one before committing them together.
    /// Default 5 ms: at tens of thousands of REGISTERs per second that is a few hundred rows per
    /// fsync, and it bounds what a crash can lose.
    pub commit_interval: Duration,
    /// Queued rows at which the writer commits without waiting out `commit_interval`.
    /// Default 4,096. Zero counts as one.
    pub max_batch: usize,
    /// Most distinct rows waiting for the next batch; beyond it writes back off (see the module
    /// docs). Default 65,536, a few seconds of peak REGISTER load. Zero counts as one.
    pub queue_capacity: usize,
    /// Longest a write waits for room in a full queue before failing with
    /// [`StoreError::Backlogged`]. Default 100 ms: long enough to ride out a slow fsync, short
    /// enough not to stall the control plane when the disk stops. `Duration::ZERO` fails at once.
    pub enqueue_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            commit_interval: Duration::from_millis(5),
            max_batch: 4096,
            queue_capacity: 65_536,
            enqueue_timeout: Duration::from_millis(100),
        }
    }
}

impl StoreOptions {
    fn normalized(self) -> Self {
        Self {
            max_batch: self.max_batch.max(1),
            queue_capacity: self.queue_capacity.max(1),
            ..self
        }
    }

    /// Queued rows at which the writer stops waiting for the interval: a full queue commits too.
    fn batch_threshold(&self) -> usize {
        self.max_batch.min(self.queue_capacity)
    }
}

/// A named table of values of type `T` under string keys, declared once as a constant:
///
/// ```ignore
/// pub const REGISTRATIONS: Table<Registration> = Table::new("registrations");
/// ```
///
/// The name is stored with every row, so it must stay stable across releases, and two constants
/// with one name must have one value type.
pub struct Table<T> {
    name: &'static str,
    value: PhantomData<fn() -> T>,
}

impl<T> Table<T> {
    /// The table called `name` in the database file.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            value: PhantomData,
        }
    }

    /// The table's name in the database file.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<T> Clone for Table<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Table<T> {}

impl<T> fmt::Debug for Table<T> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_tuple("Table").field(&self.name).finish()
    }
}

/// Counters of a [`Store`] since it was opened, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Batches committed, one fsync each.
    pub commits: u64,
    /// Rows (puts and removes) in the committed batches.
    pub rows_written: u64,
    /// Puts and removes accepted.
    pub writes_accepted: u64,
    /// Accepted writes that replaced a row still waiting for its batch.
    pub writes_coalesced: u64,
    /// Writes refused with [`StoreError::Backlogged`].
    pub writes_refused: u64,
    /// Batches whose commit failed (their rows were queued again, or lost at close).
    pub failed_commits: u64,
    /// Rows lost because the commit at close failed.
    pub rows_lost: u64,
    /// Stored rows that `scan` skipped because they did not decode.
    pub rows_skipped: u64,
    /// Rewrites of the journal that dropped its history.
    pub compactions: u64,
    /// Rows waiting for the next batch now.
    pub queued_rows: u64,
}

/// What can go wrong in the state store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store file could not be opened, read or created: bad path or permissions, another
    /// process (or another open [`Store`]) holds it, or it is not a store file.
    #[error("cannot open the state store {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The writer thread could not be started.
    #[error("cannot start the state store writer: {0}")]
    Io(#[source] std::io::Error),
    /// A commit failed (I/O error, full disk). Writes that a failed commit held stay queued and
    /// are retried.
    #[error("state store: {0}")]
    Database(#[source] Arc<std::io::Error>),
    /// A value could not be serialized; nothing was queued.
    #[error("cannot encode {table}/{key}: {source}")]
    Encode {
        /// The table written.
        table: &'static str,
        /// The key written.
        key: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A stored value does not decode as the table's type (corruption or an incompatible schema
    /// change). [`Store::get`] reports it; [`Store::scan`] skips the row instead.
    #[error("cannot decode {table}/{key}: {source}")]
    Decode {
        /// The table read.
        table: &'static str,
        /// The key read.
        key: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The write queue stayed full for the whole [`StoreOptions::enqueue_timeout`]: the disk is
    /// not keeping up. The write was not queued.
    #[error("the state store's write queue is full")]
    Backlogged,
    /// The store was closed, or its writer thread stopped (a bug, logged).
    #[error("the state store is closed")]
    Closed,
}

/// The durable state store: a cheap handle (clone it freely) to one database file and its writer
/// thread. See the module docs for the write, read, back-pressure and crash semantics.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl fmt::Debug for Store {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("Store").field("path", &self.inner.path).finish()
    }
}

impl Store {
    /// Opens the database at `path`, creating it if missing, and starts the writer thread.
    /// A file left by a crash is recovered to its last committed batch (which may take a while
    /// for a large file).
    pub fn open(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        let options = options.normalized();
        let (journal, opened) = Journal::open(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(opened.tables)),
            wake_writer: Condvar::new(),
            progress: Condvar::new(),
            options,
            #[cfg(test)]
            stall: Mutex::new(()),
        });
        let writer = std::thread::Builder::new()
            .name("floorcast-store".to_owned())
            .spawn({
                let shared = Arc::clone(&shared);
                move || run_writer(&shared, journal)
            })
            .map_err(StoreError::Io)?;
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                shared,
                writer: Mutex::new(Some(writer)),
            }),
        })
    }

    /// Queues `value` under `key`; it becomes durable with the next batch. Blocks only while the
    /// queue is full (see the module docs).
    pub fn put<T: Serialize>(&self, table: &Table<T>, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = encode(table.name, key, value)?;
        self.inner.shared.enqueue(table.name, key, Some(bytes)).map(drop)
    }

    /// Like [`Store::put`], then waits until the batch holding the write is committed (at most
    /// about `commit_interval` plus one commit). An error means "not known to be durable": the
    /// write may still be queued for a retry.
    pub fn put_durable<T: Serialize>(&self, table: &Table<T>, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = encode(table.name, key, value)?;
        let batch = self.inner.shared.enqueue(table.name, key, Some(bytes))?;
        self.inner.shared.wait_for_batch(self.inner.shared.lock(), batch)
    }

    /// Queues the removal of `key`; removing an absent key is not an error.
    pub fn remove<T>(&self, table: &Table<T>, key: &str) -> Result<(), StoreError> {
        self.inner.shared.enqueue(table.name, key, None).map(drop)
    }

    /// Commits everything queued so far without waiting out the interval, and blocks until it is
    /// durable. Used at shutdown and in tests.
    pub fn flush(&self) -> Result<(), StoreError> {
        let shared = &self.inner.shared;
        let mut state = shared.lock();
        if state.closing {
            return Err(StoreError::Closed);
        }
        let batch = if state.pending_rows > 0 {
            state.urgent = true;
            shared.wake_writer.notify_one();
            state.batches_started + 1
        } else if state.batches_done < state.batches_started {
            state.batches_started
        } else {
            return Ok(());
        };
        shared.wait_for_batch(state, batch)
    }

    /// The value under `key`, including writes not committed yet.
    pub fn get<T: DeserializeOwned>(&self, table: &Table<T>, key: &str) -> Result<Option<T>, StoreError> {
        let bytes = {
            let state = self.inner.shared.lock();
            if state.closing || !state.open {
                return Err(StoreError::Closed);
            }
            match state.queued(table.name, key) {
                Some(None) => return Ok(None),
                Some(Some(bytes)) => bytes.clone(),
                // Not written since its last commit: the committed value is the latest.
                None => match state.committed.get(table.name).and_then(|rows| rows.get(key)) {
                    Some(bytes) => bytes.clone(),
                    None => return Ok(None),
                },
            }
        };
        decode(table.name, key, &bytes).map(Some)
    }

    /// Every row of the table, by key, including writes not committed yet. Rows that do not
    /// decode are skipped, logged and counted in [`StoreStats::rows_skipped`]: a corrupted or
    /// outdated row must not keep the node from starting.
    pub fn scan<T: DeserializeOwned>(&self, table: &Table<T>) -> Result<Vec<(String, T)>, StoreError> {
        // Copied under the lock: the committed rows and the queued ones are one consistent state.
        let rows: HashMap<String, Option<Vec<u8>>> = {
            let state = self.inner.shared.lock();
            if state.closing || !state.open {
                return Err(StoreError::Closed);
            }
            let mut rows: HashMap<String, Option<Vec<u8>>> = state
                .committed
                .get(table.name)
                .map(|rows| {
                    rows.iter()
                        .map(|(key, value)| (key.clone(), Some(value.clone())))
                        .collect()
                })
                .unwrap_or_default();
            for queued in [&*state.committing, &state.pending] {
                if let Some(queued) = queued.get(table.name) {
                    rows.extend(queued.iter().map(|(key, value)| (key.clone(), value.clone())));
                }
            }
            rows
        };
        let mut values = BTreeMap::new();
        let mut skipped = 0;
        let mut keep =
            |key: String, bytes: &[u8], values: &mut BTreeMap<String, T>| match decode(table.name, &key, bytes) {
                Ok(value) => {
                    values.insert(key, value);
                }
                Err(error) => {
                    skipped += 1;
                    tracing::warn!(table = table.name, %key, %error, "skipping a stored row that does not decode");
                }
            };
        for (key, value) in rows {
            if let Some(bytes) = value {
                keep(key, &bytes, &mut values);
            }
        }
        if skipped > 0 {
            self.inner.shared.lock().stats.rows_skipped += skipped;
        }
        Ok(values.into_iter().collect())
    }

    /// The counters since the store was opened.
    pub fn stats(&self) -> StoreStats {
        let state = self.inner.shared.lock();
        StoreStats {
            queued_rows: state.pending_rows as u64,
            ..state.stats
        }
    }

    /// Commits what is queued, stops the writer and releases the file, for every handle: other
    /// clones get [`StoreError::Closed`] afterwards. Reports a failure of that last commit
    /// (its writes are lost). Dropping the last handle does the same, logging the failure.
    pub fn close(self) -> Result<(), StoreError> {
        self.inner.shutdown()
    }
}

/// What all the handles of one store share.
struct Inner {
    path: PathBuf,
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    fn shutdown(&self) -> Result<(), StoreError> {
        {
            let mut state = self.shared.lock();
            if !state.open {
                return Ok(());
            }
            state.closing = true;
        }
        self.shared.wake_writer.notify_one();
        // Writers blocked on a full queue give up at once.
        self.shared.progress.notify_all();
        let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner).take();
        let panicked = writer.is_some_and(|writer| writer.join().is_err());
        let mut state = self.shared.lock();
        // The writer has closed the file (so it can be reopened); forget the rows.
        state.open = false;
        state.committed = Arc::default();
        if panicked {
            tracing::error!(path = %self.path.display(), "the state store writer panicked; queued writes are lost");
            return Err(StoreError::Closed);
        }
        match state.close_error.take() {
            Some(error) => Err(StoreError::Database(error)),
            None => Ok(()),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            tracing::error!(path = %self.path.display(), %error, "closing the state store failed");
        }
    }
}

/// Rows by table and key; `None` is a removal.
type Rows = HashMap<&'static str, HashMap<String, Option<Vec<u8>>>>;

/// The state shared by the handles and the writer thread.
struct Shared {
    state: Mutex<State>,
    /// Signalled when the writer may have work: first row queued, batch threshold reached,
    /// flush, close.
    wake_writer: Condvar,
    /// Signalled when the writer made progress: room in the queue, a batch finished, exit.
    progress: Condvar,
    options: StoreOptions,
    /// Held by a test to stall the writer like a hung disk.
    #[cfg(test)]
    stall: Mutex<()>,
}

struct State {
    /// Until closed.
    open: bool,
    /// The committed rows (the writer changes them; a compaction reads a snapshot).
    committed: Arc<Tables>,
    /// Rows waiting for the next batch.
    pending: Rows,
    pending_rows: usize,
    /// The batch being committed, still visible to reads until its commit ends.
    committing: Arc<Rows>,
    /// Batches taken from the queue so far; batch `n` is the `n`th, numbered from one.
    batches_started: u64,
    /// Batches whose commit attempt ended, with success or not.
    batches_done: u64,
    /// The latest batch whose commit failed (0: none).
    last_failed_batch: u64,
    last_error: Option<Arc<std::io::Error>>,
    /// The failure of the last commit at close, for [`Store::close`] to report.
    close_error: Option<Arc<std::io::Error>>,
    /// A flush waits: commit without waiting out the interval.
    urgent: bool,
    /// Closing: refuse new work, commit what is queued, exit.
    closing: bool,
    writer_exited: bool,
    stats: StoreStats,
    /// Commits that tests make fail, to exercise the retry path.
    #[cfg(test)]
    failing_commits: u32,
}

impl State {
    fn new(committed: Tables) -> Self {
        Self {
            open: true,
            committed: Arc::new(committed),
            pending: Rows::new(),
            pending_rows: 0,
            committing: Arc::default(),
            batches_started: 0,
            batches_done: 0,
            last_failed_batch: 0,
            last_error: None,
            close_error: None,
            urgent: false,
            closing: false,
            writer_exited: false,
            stats: StoreStats::default(),
            #[cfg(test)]
            failing_commits: 0,
        }
    }

    #[cfg(test)]
    fn take_injected_failure(&mut self) -> bool {
        let fail = self.failing_commits > 0;
        self.failing_commits = self.failing_commits.saturating_sub(1);
        fail
    }

    #[cfg(not(test))]
    fn take_injected_failure(&mut self) -> bool {
        false
    }

    /// The newest not yet committed write of a row, if any: `Some(None)` is a queued removal.
    fn queued(&self, table: &str, key: &str) -> Option<&Option<Vec<u8>>> {
        [&self.pending, &*self.committing]
            .into_iter()
            .find_map(|rows| rows.get(table).and_then(|rows| rows.get(key)))
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic (a bug) elsewhere while holding it. The state is plain
        // data that stays usable, and refusing every later call would turn one bug into a node
        // that cannot even shut down.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues one row and returns the number of the batch that will hold it.
    fn enqueue(&self, table: &'static str, key: &str, value: Option<Vec<u8>>) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let mut give_up_at = None;
        loop {
            if state.closing || state.writer_exited {
                return Err(StoreError::Closed);
            }
            let queued = state.pending.get(table).is_some_and(|rows| rows.contains_key(key));
            if queued || state.pending_rows < self.options.queue_capacity {
                break;
            }
            let now = Instant::now();
            let give_up_at = *give_up_at.get_or_insert(now + self.options.enqueue_timeout);
            if now >= give_up_at {
                state.stats.writes_refused += 1;
                return Err(StoreError::Backlogged);
            }
            self.wake_writer.notify_one();
            state = self
                .progress
                .wait_timeout(state, give_up_at - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let state = &mut *state;
        match state.pending.entry(table).or_default().insert(key.to_owned(), value) {
            Some(_) => state.stats.writes_coalesced += 1,
            None => state.pending_rows += 1,
        }
        state.stats.writes_accepted += 1;
        if state.pending_rows == 1 || state.pending_rows >= self.options.batch_threshold() {
            self.wake_writer.notify_one();
        }
        Ok(state.batches_started + 1)
    }

    /// Waits until batch `batch` was committed.
    fn wait_for_batch(&self, mut state: MutexGuard<'_, State>, batch: u64) -> Result<(), StoreError> {
        while state.batches_done < batch {
            if state.writer_exited {
                return Err(StoreError::Closed);
            }
            state = self.progress.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        // A failure of this batch or a later one (which may hold this batch's rows, queued
        // again): report it rather than claim durability.
        if state.last_failed_batch >= batch {
            if let Some(error) = &state.last_error {
                return Err(StoreError::Database(Arc::clone(error)));
            }
        }
        Ok(())
    }
}

/// The writer thread: takes the queued rows as one batch when the interval is over (or the batch
/// is big enough, or a flush or close asks), commits it, and repeats until closed and drained.
fn run_writer(shared: &Shared, mut journal: Journal) {
    let _exit = WriterExit(shared);
    let options = &shared.options;
    let mut window_end: Option<Instant> = None;
    let mut retry_at: Option<Instant> = None;
    let mut retry_delay = FIRST_RETRY_DELAY;
    let mut state = shared.lock();
    loop {
        if state.pending_rows == 0 {
            if state.closing {
                return;
            }
            window_end = None;
            state = shared.wake_writer.wait(state).unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        let now = Instant::now();
        let wake_at = if state.closing {
            None
        } else if let Some(retry) = retry_at.filter(|&retry| now < retry) {
            Some(retry)
        } else if state.urgent || state.pending_rows >= options.batch_threshold() {
            None
        } else {
            let end = *window_end.get_or_insert(now + options.commit_interval);
            (now < end).then_some(end)
        };
        if let Some(wake_at) = wake_at {
            state = shared
                .wake_writer
                .wait_timeout(state, wake_at - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }

        window_end = None;
        retry_at = None;
        let rows = std::mem::take(&mut state.pending_rows);
        let batch = Arc::new(std::mem::take(&mut state.pending));
        state.committing = Arc::clone(&batch);
        state.urgent = false;
        state.batches_started += 1;
        let number = state.batches_started;
        let inject_failure = state.take_injected_failure();
        drop(state);
        shared.progress.notify_all();

        let started = Instant::now();
        let result = if inject_failure {
            Err(std::io::Error::other("injected by a test"))
        } else {
            #[cfg(test)]
            let _stalled = shared.stall.lock().unwrap_or_else(PoisonError::into_inner);
            write_batch(&mut journal, &batch)
        };

        state = shared.lock();
        state.committing = Arc::default();
        state.batches_done = number;
        let mut compact = None;
        match result {
            Ok(()) => {
                state.stats.commits += 1;
                state.stats.rows_written += rows as u64;
                retry_delay = FIRST_RETRY_DELAY;
                apply(&mut state, &mut journal, Arc::unwrap_or_clone(batch));
                if journal.wants_compaction() {
                    compact = Some(Arc::clone(&state.committed));
                }
                tracing::trace!(batch = number, rows, elapsed = ?started.elapsed(), "state store batch committed");
            }
            Err(error) => {
                let error = Arc::new(error);
                state.stats.failed_commits += 1;
                state.last_failed_batch = number;
                state.last_error = Some(Arc::clone(&error));
                if state.closing {
                    let lost = rows + state.pending_rows;
                    state.stats.rows_lost += lost as u64;
                    state.pending.clear();
                    state.pending_rows = 0;
                    state.close_error = Some(error.clone());
                    tracing::error!(%error, rows = lost, "cannot commit the state store's last writes at close; they are lost");
                } else {
                    requeue(&mut state, Arc::unwrap_or_clone(batch));
                    tracing::warn!(%error, rows, retry_in = ?retry_delay, "state store commit failed; will retry");
                    retry_at = Some(Instant::now() + retry_delay);
                    retry_delay = (retry_delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        }
        shared.progress.notify_all();
        if let Some(snapshot) = compact {
            // Outside the lock: reads and new writes go on; only this thread changes the rows,
            // so the snapshot is what the journal holds.
            drop(state);
            let started = Instant::now();
            let result = journal.compact(&snapshot);
            drop(snapshot);
            match result {
                Ok(()) => {
                    tracing::info!(bytes = journal.length(), elapsed = ?started.elapsed(), "state store compacted")
                }
                Err(error) => tracing::warn!(%error, "state store compaction failed; the journal stays as it was"),
            }
            state = shared.lock();
            state.stats.compactions = journal.compactions;
        }
    }
}

/// Moves a committed batch into the committed rows.
fn apply(state: &mut State, journal: &mut Journal, batch: Rows) {
    let committed = Arc::make_mut(&mut state.committed);
    for (table, rows) in batch {
        let stored = match committed.get_mut(table) {
            Some(stored) => stored,
            None => committed.entry(table.to_owned()).or_default(),
        };
        for (key, value) in rows {
            match value {
                Some(bytes) => {
                    journal.account(table, &key, stored.get(&key).map(Vec::as_slice), Some(&bytes));
                    stored.insert(key, bytes);
                }
                None => {
                    if let Some(before) = stored.remove(&key) {
                        journal.account(table, &key, Some(&before), None);
                    }
                }
            }
        }
    }
}

/// Puts the rows of a failed batch back in the queue, under any newer write of the same row.
fn requeue(state: &mut State, batch: Rows) {
    for (table, rows) in batch {
        let pending = state.pending.entry(table).or_default();
        for (key, value) in rows {
            if let Entry::Vacant(slot) = pending.entry(key) {
                slot.insert(value);
                state.pending_rows += 1;
            }
        }
    }
}

/// Tells waiters that the writer is gone, however it left (return or panic).
struct WriterExit<'a>(&'a Shared);

impl Drop for WriterExit<'_> {
    fn drop(&mut self) {
        self.0.lock().writer_exited = true;
        self.0.progress.notify_all();
    }
}

/// Appends one batch to the journal and makes it durable.
fn write_batch(journal: &mut Journal, batch: &Rows) -> std::io::Result<()> {
    journal.append(batch.iter().flat_map(|(&table, rows)| {
        rows.iter()
            .map(move |(key, value)| (table, key.as_str(), value.as_deref()))
    }))
}

fn encode<T: Serialize>(table: &'static str, key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode {
        table,
        key: key.to_owned(),
        source,
    })
}

fn decode<T: DeserializeOwned>(table: &'static str, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        table,
        key: key.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    use serde::Deserialize;
    use tempfile::TempDir;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    struct Registration {
        contact: String,
        serving_node: String,
        expires: u64,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    enum Restriction {
        Stunned,
        Killed,
    }

    const REGISTRATIONS: Table<Registration> = Table::new("registrations");
    const GROUP_MEMBERS: Table<Vec<String>> = Table::new("group_members");
    const RESTRICTIONS: Table<Restriction> = Table::new("restrictions");

    /// Set in the environment of the child process of `committed_writes_survive_abort`.
    const CRASH_CHILD_PATH: &str = "FLOORCAST_STORE_CRASH_CHILD_PATH";
    const CRASH_MARKER: &str = "store crash child: flushed, aborting";
    /// The signal `std::process::abort` raises, 6 on every Linux target.
    const SIGABRT: i32 = 6;

    fn registration(user: u64) -> Registration {
        Registration {
            contact: format!("sip:{user}@10.0.{}.{}:5060", user / 256 % 256, user % 256),
            serving_node: "node-a".to_owned(),
            expires: 1_700_000_000 + user,
        }
    }

    fn database_path(directory: &TempDir) -> PathBuf {
        directory.path().join("state.db")
    }

    /// Options under which the writer commits only on `max_batch`, flush or close.
    fn patient() -> StoreOptions {
        StoreOptions {
            commit_interval: Duration::from_secs(600),
            ..StoreOptions::default()
        }
    }

    /// What is committed, bypassing the queue.
    fn committed(store: &Store, table: &str, key: &str) -> Option<Vec<u8>> {
        let state = store.inner.shared.lock();
        state.committed.get(table).and_then(|rows| rows.get(key)).cloned()
    }

    #[test]
    fn store_is_a_shareable_handle() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<Store>();
        shareable::<Table<Registration>>();
    }

    #[test]
    fn round_trip_across_tables() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(&database_path(&directory), StoreOptions::default()).unwrap();
        for user in [3, 1, 2] {
            store
                .put(&REGISTRATIONS, &user.to_string(), &registration(user))
                .unwrap();
        }
        let members = vec!["1".to_owned(), "2".to_owned()];
        store.put(&GROUP_MEMBERS, "9001", &members).unwrap();
        store.put(&RESTRICTIONS, "2", &Restriction::Stunned).unwrap();
        store.put(&RESTRICTIONS, "3", &Restriction::Killed).unwrap();
        store.flush().unwrap();

        assert_eq!(store.get(&REGISTRATIONS, "2").unwrap(), Some(registration(2)));
        assert_eq!(store.get(&GROUP_MEMBERS, "9001").unwrap(), Some(members));
        assert_eq!(store.get(&RESTRICTIONS, "3").unwrap(), Some(Restriction::Killed));
        assert_eq!(store.get(&RESTRICTIONS, "1").unwrap(), None);
        // One key, several tables: no crosstalk.
        assert_eq!(store.get(&GROUP_MEMBERS, "2").unwrap(), None);

        store.remove(&REGISTRATIONS, "1").unwrap();
        store.remove(&RESTRICTIONS, "2").unwrap();
        store.remove(&RESTRICTIONS, "never-there").unwrap();
        store.flush().unwrap();
        assert_eq!(store.get(&REGISTRATIONS, "1").unwrap(), None);
        assert_eq!(
            store.scan(&REGISTRATIONS).unwrap(),
            vec![("2".to_owned(), registration(2)), ("3".to_owned(), registration(3))]
        );
        assert_eq!(
            store.scan(&RESTRICTIONS).unwrap(),
            vec![("3".to_owned(), Restriction::Killed)]
        );

        const NEVER_WRITTEN: Table<u32> = Table::new("never_written");
        assert_eq!(store.get(&NEVER_WRITTEN, "1").unwrap(), None);
        assert!(store.scan(&NEVER_WRITTEN).unwrap().is_empty());
        assert_eq!(store.stats().rows_skipped, 0);
    }

    #[test]
    fn data_survives_close_and_reopen() {
        let directory = tempfile::tempdir().unwrap();
        let path = database_path(&directory);
        let store = Store::open(&path, patient()).unwrap();
        let other_handle = store.clone();
        for user in 0..100 {
            store
                .put(&REGISTRATIONS, &user.to_string(), &registration(user))
                .unwrap();
        }
        store.put(&GROUP_MEMBERS, "9001", &vec!["5".to_owned()]).unwrap();
        store.close().unwrap();

        // Closing released the file for everyone, even though a clone is still alive.
        assert!(matches!(other_handle.get(&REGISTRATIONS, "1"), Err(StoreError::Closed)));
        assert!(matches!(
            other_handle.put(&REGISTRATIONS, "1", &registration(1)),
            Err(StoreError::Closed)
        ));
        assert!(matches!(other_handle.flush(), Err(StoreError::Closed)));
        let store = Store::open(&path, patient()).unwrap();
        let rows = store.scan(&REGISTRATIONS).unwrap();
        assert_eq!(rows.len(), 100);
        assert!(rows
            .iter()
            .all(|(key, value)| *value == registration(key.parse().unwrap())));
        assert_eq!(store.get(&GROUP_MEMBERS, "9001").unwrap(), Some(vec!["5".to_owned()]));
        drop(other_handle);
    }

    #[test]
    fn dropping_the_last_handle_commits_the_queue() {
        let directory = tempfile::tempdir().unwrap();
        let path = database_path(&directory);
        let store = Store::open(&path, patient()).unwrap();
        let clone = store.clone();
        store.put(&REGISTRATIONS, "1", &registration(1)).unwrap();
        drop(store);
        clone.put(&REGISTRATIONS, "2", &registration(2)).unwrap();
        assert_eq!(clone.stats().commits, 0);
        drop(clone);

        let store = Store::open(&path, patient()).unwrap();
        assert_eq!(store.scan(&REGISTRATIONS).unwrap().len(), 2);
    }

    #[test]
    fn reads_see_queued_writes_before_they_commit() {
        let directory = tempfile::tempdir().unwrap();
        let path = database_path(&directory);
        let store = Store::open(&path, patient()).unwrap();
        store.put(&REGISTRATIONS, "a", &registration(1)).unwrap();
        store.put(&REGISTRATIONS, "b", &registration(2)).unwrap();
        assert_eq!(store.stats().commits, 0);
        assert_eq!(committed(&store, "registrations", "a"), None);
        assert_eq!(store.get(&REGISTRATIONS, "a").unwrap(), Some(registration(1)));
        assert_eq!(store.scan(&REGISTRATIONS).unwrap().len(), 2);

        store.flush().unwrap();
        assert_eq!(store.stats().commits, 1);
        assert!(committed(&store, "registrations", "a").is_some());

        // A queued removal hides the committed row; a queued put replaces it.
        store.remove(&REGISTRATIONS, "a").unwrap();
        store.put(&REGISTRATIONS, "b", &registration(20)).unwrap();
        store.put(&REGISTRATIONS, "c", &registration(3)).unwrap();
        assert_eq!(store.stats().queued_rows, 3);
        assert!(committed(&store, "registrations", "a").is_some());
        assert_eq!(store.get(&REGISTRATIONS, "a").unwrap(), None);
        assert_eq!(store.get(&REGISTRATIONS, "b").unwrap(), Some(registration(20)));
        assert_eq!(
            store.scan(&REGISTRATIONS).unwrap(),
            vec![("b".to_owned(), registration(20)), ("c".to_owned(), registration(3))]
        );
        drop(store);

        let store = Store::open(&path, patient()).unwrap();
        assert_eq!(
            store.scan(&REGISTRATIONS).unwrap(),
            vec![("b".to_owned(), registration(20)), ("c".to_owned(), registration(3))]
        );
    }

    #[test]
    fn put_durable_returns_once_committed() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(&database_path(&directory), StoreOptions::default()).unwrap();
        store.put_durable(&REGISTRATIONS, "1", &registration(1)).unwrap();
        assert!(store.stats().commits >= 1);
        let bytes = committed(&store, "registrations", "1").unwrap();
        assert_eq!(serde_json::from_slice::<Registration>(&bytes).unwrap(), registration(1));
    }

    #[test]
    fn group_commit_batches_many_puts() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(&database_path(&directory), StoreOptions::default()).unwrap();
        for user in 0..10_000 {
            store
                .put(&REGISTRATIONS, &user.to_string(), &registration(user))
                .unwrap();
        }
        store.flush().unwrap();
        let stats = store.stats();
        assert_eq!(stats.rows_written, 10_000);
        assert_eq!(stats.writes_accepted, 10_000);
        assert!(stats.commits >= 1);
        // At most one commit per 20 puts even on a slow machine; typically a few dozen in all.
        assert!(stats.commits <= 500, "{stats:?}");
    }

    #[test]
    fn max_batch_commits_without_waiting_for_the_interval() {
        let directory = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            max_batch: 1_000,
            ..patient()
        };
        let store = Store::open(&database_path(&directory), options).unwrap();
        for user in 0..10_000 {
            store
                .put(&REGISTRATIONS, &user.to_string(), &registration(user))
                .unwrap();
        }
        // The interval is ten minutes: only max_batch can have started these commits.
        let deadline = Instant::now() + Duration::from_secs(30);
        while store.stats().commits == 0 {
            assert!(Instant::now() < deadline, "no commit without flush");
            std::thread::sleep(Duration::from_millis(1));
        }
        store.flush().unwrap();
        let stats = store.stats();
        assert_eq!(stats.rows_written, 10_000);
        // Every batch but the flushed remainder holds at least max_batch rows.
        assert!(stats.commits <= 11, "{stats:?}");
    }

    #[test]
    fn rewrites_of_a_queued_row_coalesce() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(&database_path(&directory), patient()).unwrap();
        for expiry in 0..100 {
            let value = Registration {
                expires: expiry,
                ..registration(7)
            };
            store.put(&REGISTRATIONS, "7", &value).unwrap();
        }
        store.flush().unwrap();
        let stats = store.stats();
        assert_eq!((stats.commits, stats.rows_written, stats.writes_coalesced), (1, 1, 99));
        assert_eq!(store.get(&REGISTRATIONS, "7").unwrap().unwrap().expires, 99);
    }

    #[test]
    fn rows_that_do_not_decode_are_skipped_on_scan() {
        let directory = tempfile::tempdir().unwrap();
        let path = database_path(&directory);
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        for user in 1..=3 {
            store
                .put(&REGISTRATIONS, &user.to_string(), &registration(user))
                .unwrap();
        }
        store.flush().unwrap();
        // Garbage, and a row of an older schema, written under the same table.
        let shared = &store.inner.shared;
        shared
            .enqueue("registrations", "15", Some(b"\xff\x00garbage".to_vec()))
            .unwrap();
        shared
            .enqueue("registrations", "25", Some(br#"{"contact":5}"#.to_vec()))
            .unwrap();
        store.flush().unwrap();

        let rows = store.scan(&REGISTRATIONS).unwrap();
        assert_eq!(
            rows.iter().map(|(key, _)| key.as_str()).collect::<Vec<_>>(),
            ["1", "2", "3"]
        );
        assert_eq!(store.stats().rows_skipped, 2);
        assert!(matches!(
            store.get(&REGISTRATIONS, "15"),
            Err(StoreError::Decode {
                table: "registrations",
                ..
            })
        ));
        assert_eq!(store.get(&REGISTRATIONS, "2").unwrap(), Some(registration(2)));

        // A good write over a bad row heals it.
        store.put(&REGISTRATIONS, "25", &registration(25)).unwrap();
        assert_eq!(store.scan(&REGISTRATIONS).unwrap().len(), 4);
        store.close().unwrap();
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        assert_eq!(store.scan(&REGISTRATIONS).unwrap().len(), 4);
        assert_eq!(store.stats().rows_skipped, 1);
    }

    #[test]
    fn a_journal_of_mostly_history_is_compacted_and_loses_nothing() {
        let directory = tempfile::tempdir().unwrap();
        let path = database_path(&directory);
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        let row = |user: u64, round: u64| Registration {
            expires: round,
            ..registration(user)
        };
        // About 200 rows of ~90 bytes rewritten until the journal passed the compaction size
        // more than once.
        let mut round = 0;
        while store.stats().compactions < 2 {
            assert!(round < 2_000, "no compaction after {round} rounds: {:?}", store.stats());
            for user in 0..200 {
                store.put(&REGISTRATIONS, &user.to_string(), &row(user, round)).unwrap();
            }
            store.remove(&REGISTRATIONS, &(round % 200).to_string()).unwrap();
            store.flush().unwrap();
            round += 1;
        }
        let last = round - 1;
        let expected = |user: u64| (user != last % 200).then(|| row(user, last));
        for user in 0..200 {
            assert_eq!(store.get(&REGISTRATIONS, &user.to_string()).unwrap(), expected(user));
        }
        store.close().unwrap();
        assert!(
            std::fs::metadata(&path).unwrap().len() < crate::node::journal::COMPACT_MIN_BYTES,
            "the journal was not cut down"
        );
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        let rows: HashMap<String, Registration> = store.scan(&REGISTRATIONS).unwrap().into_iter().collect();
        assert_eq!(rows.len(), 199);
        for user in 0..200 {
            assert_eq!(rows.get(&user.to_string()).cloned(), expected(user), "user {user}");
        }
    }

    #[test]
    fn a_full_queue_blocks_then_refuses() {
        let directory = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            commit_interval: Duration::from_millis(1),
            queue_capacity: 8,
            enqueue_timeout: Duration::from_millis(200),
            ..StoreOptions::default()
        };
        let store = Store::open(&database_path(&directory), options).unwrap();
        // Holding the stall lock stalls the writer like a hung disk.
        let stall = store.inner.shared.stall.lock().unwrap();

        let mut accepted = Vec::new();
        let refused = loop {
            let key = accepted.len().to_string();
            let started = Instant::now();
            match store.put(&RESTRICTIONS, &key, &Restriction::Stunned) {
                Ok(()) => accepted.push(key),
                Err(error) => break (key, error, started.elapsed()),
            }
            // The writer took at most one batch (at most the queue's size) before stalling.
            assert!(accepted.len() <= 16);
        };
        assert!(matches!(refused.1, StoreError::Backlogged), "{:?}", refused.1);
        assert!(refused.2 >= Duration::from_millis(200), "gave up after {:?}", refused.2);
        assert_eq!(store.stats().writes_refused, 1);
        // A row already queued is rewritten in place, full or not.
        let last = accepted.last().unwrap();
        store.put(&RESTRICTIONS, last, &Restriction::Killed).unwrap();

        std::thread::scope(|scope| {
            let late = scope.spawn(|| store.put(&RESTRICTIONS, "late", &Restriction::Stunned));
            std::thread::sleep(Duration::from_millis(20));
            drop(stall);
            late.join().unwrap().unwrap();
        });
        store.flush().unwrap();

        let rows: HashMap<String, Restriction> = store.scan(&RESTRICTIONS).unwrap().into_iter().collect();
        assert_eq!(rows.len(), accepted.len() + 1);
        assert!(accepted.iter().all(|key| rows.contains_key(key)));
        assert_eq!(rows[last], Restriction::Killed);
        assert!(rows.contains_key("late"));
        assert!(!rows.contains_key(&refused.0));
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let directory = tempfile::tempdir().unwrap();
        let path = database_path(&directory);
        let options = StoreOptions {
            queue_capacity: 512,
            enqueue_timeout: Duration::from_secs(60),
            ..StoreOptions::default()
        };
        let store = Store::open(&path, options).unwrap();
        std::thread::scope(|scope| {
            for thread in 0..100_u64 {
                let store = store.clone();
                scope.spawn(move || {
                    for index in 0..100 {
                        let user = thread * 1_000 + index;
                        store
                            .put(&REGISTRATIONS, &user.to_string(), &registration(user))
                            .unwrap();
                    }
                    for index in (0..100).step_by(10) {
                        store
                            .remove(&REGISTRATIONS, &(thread * 1_000 + index).to_string())
                            .unwrap();
                    }
                });
            }
        });
        let expected: Vec<u64> = (0..100_u64)
            .flat_map(|thread| {
                (0..100)
                    .filter(|index| index % 10 != 0)
                    .map(move |index| thread * 1_000 + index)
            })
            .collect();
        let check = |store: &Store| {
            let rows: HashMap<String, Registration> = store.scan(&REGISTRATIONS).unwrap().into_iter().collect();
            assert_eq!(rows.len(), expected.len());
            for user in &expected {
                assert_eq!(rows[&user.to_string()], registration(*user));
            }
        };
        check(&store);
        store.flush().unwrap();
        assert_eq!(store.stats().writes_accepted, 100 * 110);
        store.close().unwrap();
        check(&Store::open(&path, options).unwrap());
    }

    #[test]
    fn a_failed_commit_is_retried_and_reported() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(&database_path(&directory), StoreOptions::default()).unwrap();
        store.inner.shared.lock().failing_commits = u32::MAX;
        store.put(&REGISTRATIONS, "a", &registration(1)).unwrap();
        store.put(&REGISTRATIONS, "b", &registration(2)).unwrap();
        assert!(matches!(store.flush(), Err(StoreError::Database(_))));
        // Still queued, still visible; a newer write wins over the requeued one.
        assert_eq!(store.get(&REGISTRATIONS, "a").unwrap(), Some(registration(1)));
        assert_eq!(committed(&store, "registrations", "a"), None);
        store.put(&REGISTRATIONS, "a", &registration(100)).unwrap();
        store.put(&REGISTRATIONS, "c", &registration(3)).unwrap();
        assert!(matches!(
            store.put_durable(&REGISTRATIONS, "d", &registration(4)),
            Err(StoreError::Database(_))
        ));
        // The disk recovers.
        store.inner.shared.lock().failing_commits = 0;
        store.flush().unwrap();

        let stats = store.stats();
        assert!(stats.failed_commits >= 2, "{stats:?}");
        assert_eq!((stats.commits, stats.rows_written), (1, 4), "{stats:?}");
        let bytes = committed(&store, "registrations", "a").unwrap();
        assert_eq!(
            serde_json::from_slice::<Registration>(&bytes).unwrap(),
            registration(100)
        );
        assert!(committed(&store, "registrations", "d").is_some());
    }

    #[test]
    fn close_reports_a_failed_last_commit() {
        let directory = tempfile::tempdir().unwrap();
        let path = database_path(&directory);
        let store = Store::open(&path, patient()).unwrap();
        let observer = store.clone();
        store.inner.shared.lock().failing_commits = 1;
        store.put(&REGISTRATIONS, "lost", &registration(1)).unwrap();
        assert!(matches!(store.close(), Err(StoreError::Database(_))));
        assert_eq!(observer.stats().rows_lost, 1);

        let store = Store::open(&path, patient()).unwrap();
        assert_eq!(store.get(&REGISTRATIONS, "lost").unwrap(), None);
        drop(observer);
    }

    /// The child half of `committed_writes_survive_abort`; does nothing in a normal test run.
    #[test]
    fn crash_child_process() {
        let Some(path) = std::env::var_os(CRASH_CHILD_PATH) else {
            return;
        };
        let store = Store::open(Path::new(&path), StoreOptions::default()).unwrap();
        for user in 0..1_000 {
            store
                .put(&REGISTRATIONS, &user.to_string(), &registration(user))
                .unwrap();
        }
        store.remove(&REGISTRATIONS, "7").unwrap();
        store.flush().unwrap();
        // Keep the writer busy so that the abort may land in the middle of a commit.
        for user in 1_000..3_000 {
            store
                .put(&REGISTRATIONS, &user.to_string(), &registration(user))
                .unwrap();
        }
        println!("{CRASH_MARKER}");
        std::process::abort();
    }

    #[test]
    fn committed_writes_survive_abort() {
        let directory = tempfile::tempdir().unwrap();
        let path = database_path(&directory);
        // Test names leave out the crate's name; this works wherever the module lives.
        let module = module_path!().split_once("::").map_or(module_path!(), |(_, rest)| rest);
        let output = Command::new(std::env::current_exe().unwrap())
            .args([&format!("{module}::crash_child_process"), "--exact", "--nocapture"])
            .env(CRASH_CHILD_PATH, &path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains(CRASH_MARKER), "child did not get to flush: {stdout}");
        assert_eq!(output.status.signal(), Some(SIGABRT), "{:?}", output.status);

        let store = Store::open(&path, StoreOptions::default()).unwrap();
        let rows: HashMap<String, Registration> = store.scan(&REGISTRATIONS).unwrap().into_iter().collect();
        assert_eq!(store.stats().rows_skipped, 0);
        for user in 0..1_000 {
            let row = rows.get(&user.to_string());
            if user == 7 {
                assert_eq!(row, None);
            } else {
                assert_eq!(row, Some(&registration(user)), "user {user}");
            }
        }
        // Later writes may or may not have made it, but never torn.
        for (key, value) in &rows {
            assert_eq!(*value, registration(key.parse().unwrap()));
        }
    }
}
