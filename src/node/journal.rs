//! The store's file: an append-only journal of row writes, replayed into memory at open and
//! rewritten (compacted) when most of it is history.
//!
//! # Format
//!
//! The file starts with the 8 bytes `FCJRNL01`; then records, each
//!
//! ```text
//! u32 LE body length | u32 LE CRC-32 of the body | body
//! body = u8 kind (1 put, 0 remove) | u8 table length | table | u16 LE key length | key | value
//! ```
//!
//! where the value (the row's bytes; absent for a removal) runs to the end of the body. A batch
//! of writes is appended with one `write` and made durable with one `fdatasync`. A crash can
//! leave a partly written last batch: at open, the first record that is cut short or fails its
//! CRC ends the journal, and the file is truncated there (the batch was never reported durable).
//!
//! # Compaction
//!
//! When the file is more than twice the size of the live rows (and at least
//! [`COMPACT_MIN_BYTES`]), the live rows are written to `<path>.compact`, synced, and renamed over
//! the file (then the directory is synced): a crash at any point leaves either the old file or
//! the new one, whole. A leftover `.compact` file is removed at open.
//!
//! # Why not a B-tree
//!
//! The store held its rows in redb until it measured as a fifth of the node's CPU per REGISTER:
//! each row rewrote a 4 KiB copy-on-write leaf and each commit wrote every such page. Rows here
//! are small and few per user, all of them fit in memory, and they are only ever looked up by
//! key or read whole at start: a journal writes each row once, in sequence. A redb file from an
//! earlier version is imported at open ([`Journal::open`]); the original is kept beside it as
//! `<path>.redb-imported`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The file's first bytes.
const MAGIC: &[u8; 8] = b"FCJRNL01";

/// The first bytes of a redb file (its magic number).
const REDB_MAGIC: &[u8; 6] = b"redb\x1a\x0a";

/// Bytes before a record's body: length and CRC.
const RECORD_HEADER: usize = 8;

/// Below this size the file is never compacted (the rewrite would cost more than it saves).
pub const COMPACT_MIN_BYTES: u64 = 4 * 1024 * 1024;

/// Rows by table and key, as committed.
pub type Tables = HashMap<String, HashMap<String, Vec<u8>>>;

/// The longest table name and key a record can hold.
const MAX_TABLE: usize = u8::MAX as usize;
const MAX_KEY: usize = u16::MAX as usize;

/// An open journal: the file, where the next record goes, and what the live rows take.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Bytes of valid journal: the next record goes here.
    length: u64,
    /// Bytes the live rows would take as records (what a compaction would write, less the magic).
    live: u64,
    /// A failed append may have left bytes past `length`: cut them before the next one.
    dirty_tail: bool,
    buffer: Vec<u8>,
    /// Compactions done, for stats.
    pub compactions: u64,
}

/// What [`Journal::open`] found.
#[derive(Debug, Default)]
pub struct Opened {
    /// The committed rows.
    pub tables: Tables,
    /// Bytes of a torn or corrupt tail that were cut off.
    pub discarded_bytes: u64,
    /// Rows imported from a redb file of an earlier version.
    pub imported_rows: u64,
}

/// The bytes one row takes as a record.
pub fn record_size(table: &str, key: &str, value: Option<&[u8]>) -> u64 {
    (RECORD_HEADER + 1 + 1 + table.len() + 2 + key.len() + value.map_or(0, <[u8]>::len)) as u64
}

/// Appends one record to `buffer`. Names and keys longer than a record can hold are refused.
pub fn encode_record(buffer: &mut Vec<u8>, table: &str, key: &str, value: Option<&[u8]>) -> io::Result<()> {
    if table.len() > MAX_TABLE || key.len() > MAX_KEY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "table name or key too long",
        ));
    }
    let body_length = 1 + 1 + table.len() + 2 + key.len() + value.map_or(0, <[u8]>::len);
    let body_length =
        u32::try_from(body_length).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "row too large"))?;
    let start = buffer.len();
    buffer.extend_from_slice(&body_length.to_le_bytes());
    buffer.extend_from_slice(&[0; 4]);
    let body = buffer.len();
    buffer.push(u8::from(value.is_some()));
    buffer.push(table.len() as u8);
    buffer.extend_from_slice(table.as_bytes());
    buffer.extend_from_slice(&(key.len() as u16).to_le_bytes());
    buffer.extend_from_slice(key.as_bytes());
    if let Some(value) = value {
        buffer.extend_from_slice(value);
    }
    let crc = crc32fast::hash(buffer.get(body..).unwrap_or_default());
    if let Some(slot) = buffer.get_mut(start + 4..start + 8) {
        slot.copy_from_slice(&crc.to_le_bytes());
    }
    Ok(())
}

/// One decoded record.
struct Record<'a> {
    table: &'a str,
    key: &'a str,
    value: Option<&'a [u8]>,
}

/// Decodes the record at the start of `bytes`: the record and its total size, or `None` when
/// the bytes do not hold a whole, intact record.
fn decode_record(bytes: &[u8]) -> Option<(Record<'_>, usize)> {
    let length = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let body = bytes.get(RECORD_HEADER..RECORD_HEADER.checked_add(length)?)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let kind = *body.first()?;
    let table_length = usize::from(*body.get(1)?);
    let table = std::str::from_utf8(body.get(2..2 + table_length)?).ok()?;
    let at = 2 + table_length;
    let key_length = usize::from(u16::from_le_bytes(body.get(at..at + 2)?.try_into().ok()?));
    let key = std::str::from_utf8(body.get(at + 2..at + 2 + key_length)?).ok()?;
    let rest = body.get(at + 2 + key_length..)?;
    let value = match kind {
        1 => Some(rest),
        0 if rest.is_empty() => None,
        _ => return None,
    };
    Some((Record { table, key, value }, RECORD_HEADER + length))
}

fn compact_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".compact");
    PathBuf::from(name)
}

fn imported_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".redb-imported");
    PathBuf::from(name)
}

/// Syncs the directory holding `path`, so that a rename or a creation in it is durable.
fn sync_directory(path: &Path) -> io::Result<()> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(directory)?.sync_all()
}

/// Takes the file's exclusive advisory lock: a second process (or a second [`Journal`] in this
/// one) opening the same file is refused rather than allowed to interleave its writes.
fn lock(file: &File) -> io::Result<()> {
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked == 0 {
        Ok(())
    } else {
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::WouldBlock {
            Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the store file is in use by another process or store",
            ))
        } else {
            Err(error)
        }
    }
}

/// Writes `tables` as a new journal at `path`'s `.compact` sibling, syncs it and renames it
/// over `path`. Returns the new file (locked) and its length.
fn rewrite(path: &Path, tables: &Tables, buffer: &mut Vec<u8>) -> io::Result<(File, u64)> {
    let temporary = compact_path(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)?;
    lock(&file)?;
    buffer.clear();
    buffer.extend_from_slice(MAGIC);
    let mut written = 0u64;
    for (table, rows) in tables {
        for (key, value) in rows {
            encode_record(buffer, table, key, Some(value))?;
            if buffer.len() >= 1 << 20 {
                file.write_all_at(buffer, written)?;
                written += buffer.len() as u64;
                buffer.clear();
            }
        }
    }
    file.write_all_at(buffer, written)?;
    written += buffer.len() as u64;
    buffer.clear();
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    sync_directory(path)?;
    Ok((file, written))
}

/// Reads every row of a redb file written by an earlier version of the store (string keys,
/// byte values, one table per row type).
fn read_redb(path: &Path) -> io::Result<Tables> {
    use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};
    let failed = |error: &dyn std::fmt::Display| io::Error::other(format!("importing the redb store: {error}"));
    let database = redb::Database::open(path).map_err(|error| failed(&error))?;
    let transaction = database.begin_read().map_err(|error| failed(&error))?;
    let mut tables = Tables::new();
    for handle in transaction.list_tables().map_err(|error| failed(&error))? {
        let name = handle.name().to_owned();
        let definition: TableDefinition<'_, &str, &[u8]> = TableDefinition::new(&name);
        let table = transaction.open_table(definition).map_err(|error| failed(&error))?;
        let mut rows = HashMap::with_capacity(table.len().unwrap_or(0) as usize);
        for row in table.iter().map_err(|error| failed(&error))? {
            let (key, value) = row.map_err(|error| failed(&error))?;
            rows.insert(key.value().to_owned(), value.value().to_vec());
        }
        tables.insert(name, rows);
    }
    Ok(tables)
}

impl Journal {
    /// Opens the journal at `path`, creating it if missing, and replays it. A torn tail is cut
    /// off; a redb file of an earlier version is imported. Fails if another process (or store)
    /// holds the file, or if it is neither.
    pub fn open(path: &Path) -> io::Result<(Journal, Opened)> {
        // A compaction interrupted by a crash: the file itself is whole, the copy is not.
        match std::fs::remove_file(compact_path(path)) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        lock(&file)?;
        let mut bytes = Vec::new();
        {
            use std::io::Read;
            (&file).read_to_end(&mut bytes)?;
        }
        let mut opened = Opened::default();
        let mut buffer = Vec::new();
        if bytes.starts_with(REDB_MAGIC) {
            // redb takes the file's lock itself.
            drop(file);
            let tables = read_redb(path)?;
            opened.imported_rows = tables.values().map(|rows| rows.len() as u64).sum();
            std::fs::copy(path, imported_path(path))?;
            let (file, length) = rewrite(path, &tables, &mut buffer)?;
            tracing::info!(
                path = %path.display(),
                rows = opened.imported_rows,
                kept = %imported_path(path).display(),
                "imported the state store from redb"
            );
            let live = live_bytes(&tables);
            opened.tables = tables;
            return Ok((Journal::new(path, file, length, live), opened));
        }
        if bytes.is_empty() {
            file.write_all_at(MAGIC, 0)?;
            file.sync_all()?;
            sync_directory(path)?;
            return Ok((Journal::new(path, file, MAGIC.len() as u64, 0), opened));
        }
        if !bytes.starts_with(MAGIC) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a floorcast store file (nor a redb file to import)",
            ));
        }
        let mut at = MAGIC.len();
        while let Some((record, size)) = bytes.get(at..).and_then(decode_record) {
            let rows = match opened.tables.get_mut(record.table) {
                Some(rows) => rows,
                None => opened.tables.entry(record.table.to_owned()).or_default(),
            };
            match record.value {
                Some(value) => drop(rows.insert(record.key.to_owned(), value.to_vec())),
                None => drop(rows.remove(record.key)),
            }
            at += size;
        }
        if at < bytes.len() {
            opened.discarded_bytes = (bytes.len() - at) as u64;
            tracing::warn!(
                path = %path.display(),
                bytes = opened.discarded_bytes,
                "the state store ends in a torn or damaged batch (a crash during a commit); cutting it off"
            );
            file.set_len(at as u64)?;
            file.sync_all()?;
        }
        let live = live_bytes(&opened.tables);
        Ok((Journal::new(path, file, at as u64, live), opened))
    }

    fn new(path: &Path, file: File, length: u64, live: u64) -> Journal {
        Journal {
            path: path.to_owned(),
            file,
            length,
            live,
            dirty_tail: false,
            buffer: Vec::new(),
            compactions: 0,
        }
    }

    /// Bytes of valid journal.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// Appends `rows` as one batch (`(table, key, value)`, `None` a removal) and makes it durable
    /// (`fdatasync`). On error nothing of the batch counts: the next append overwrites it.
    pub fn append<'a>(&mut self, rows: impl Iterator<Item = (&'a str, &'a str, Option<&'a [u8]>)>) -> io::Result<()> {
        if self.dirty_tail {
            self.file.set_len(self.length)?;
            self.dirty_tail = false;
        }
        self.buffer.clear();
        for (table, key, value) in rows {
            encode_record(&mut self.buffer, table, key, value)?;
        }
        self.dirty_tail = true;
        self.file.write_all_at(&self.buffer, self.length)?;
        self.file.sync_data()?;
        self.dirty_tail = false;
        self.length += self.buffer.len() as u64;
        Ok(())
    }

    /// Accounts a committed row write in the live size: `before` the row's previous value, if
    /// any, `after` its new one (`None`: removed).
    pub fn account(&mut self, table: &str, key: &str, before: Option<&[u8]>, after: Option<&[u8]>) {
        if let Some(before) = before {
            self.live = self.live.saturating_sub(record_size(table, key, Some(before)));
        }
        if let Some(after) = after {
            self.live += record_size(table, key, Some(after));
        }
    }

    /// Whether the file is mostly history: more than twice the live rows, and big enough.
    pub fn wants_compaction(&self) -> bool {
        self.length >= COMPACT_MIN_BYTES && self.length > 2 * (self.live + MAGIC.len() as u64)
    }

    /// Rewrites the file with only `tables` (which must be the committed rows).
    pub fn compact(&mut self, tables: &Tables) -> io::Result<()> {
        let (file, length) = rewrite(&self.path, tables, &mut self.buffer)?;
        self.file = file;
        self.length = length;
        self.live = length - MAGIC.len() as u64;
        self.dirty_tail = false;
        self.compactions += 1;
        // A large buffer served the rewrite; don't keep it.
        self.buffer = Vec::new();
        Ok(())
    }
}

fn live_bytes(tables: &Tables) -> u64 {
    tables
        .iter()
        .flat_map(|(table, rows)| {
            rows.iter()
                .map(move |(key, value)| record_size(table, key, Some(value)))
        })
        .sum()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn rows(journal: &mut Journal, rows: &[(&str, &str, Option<&str>)]) {
        journal
            .append(
                rows.iter()
                    .map(|(table, key, value)| (*table, *key, value.map(str::as_bytes))),
            )
            .unwrap();
    }

    fn value<'a>(tables: &'a Tables, table: &str, key: &str) -> Option<&'a str> {
        tables
            .get(table)
            .and_then(|rows| rows.get(key))
            .map(|bytes| std::str::from_utf8(bytes).unwrap())
    }

    #[test]
    fn batches_replay_in_order_after_reopen() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("state");
        let (mut journal, opened) = Journal::open(&path).unwrap();
        assert!(opened.tables.is_empty());
        rows(
            &mut journal,
            &[("a", "1", Some("one")), ("a", "2", Some("two")), ("b", "1", Some("x"))],
        );
        rows(&mut journal, &[("a", "1", None), ("a", "2", Some("deux"))]);
        drop(journal);
        let (_, opened) = Journal::open(&path).unwrap();
        assert_eq!(value(&opened.tables, "a", "1"), None);
        assert_eq!(value(&opened.tables, "a", "2"), Some("deux"));
        assert_eq!(value(&opened.tables, "b", "1"), Some("x"));
        assert_eq!(opened.discarded_bytes, 0);
    }

    #[test]
    fn a_torn_or_damaged_tail_is_cut_off_and_the_rest_kept() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("state");
        let (mut journal, _) = Journal::open(&path).unwrap();
        rows(&mut journal, &[("a", "1", Some("one"))]);
        let good = journal.length();
        rows(&mut journal, &[("a", "2", Some("two")), ("a", "3", Some("three"))]);
        let full = journal.length();
        drop(journal);
        // Every cut inside the second batch, and a flipped bit in it, lose exactly that batch's
        // damaged part and never anything before it.
        for cut in good + 1..full {
            let copy = directory.path().join(format!("cut-{cut}"));
            std::fs::copy(&path, &copy).unwrap();
            OpenOptions::new()
                .write(true)
                .open(&copy)
                .unwrap()
                .set_len(cut)
                .unwrap();
            let (journal, opened) = Journal::open(&copy).unwrap();
            assert_eq!(value(&opened.tables, "a", "1"), Some("one"), "cut at {cut}");
            assert_eq!(value(&opened.tables, "a", "3"), None, "cut at {cut}");
            assert_eq!(journal.length() + opened.discarded_bytes, cut);
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let (mut journal, opened) = Journal::open(&path).unwrap();
        assert_eq!(value(&opened.tables, "a", "2"), Some("two"));
        assert_eq!(value(&opened.tables, "a", "3"), None);
        assert!(opened.discarded_bytes > 0);
        // Appending after the cut continues a valid journal.
        rows(&mut journal, &[("a", "4", Some("four"))]);
        drop(journal);
        let (_, opened) = Journal::open(&path).unwrap();
        assert_eq!(value(&opened.tables, "a", "4"), Some("four"));
        assert_eq!(opened.discarded_bytes, 0);
    }

    #[test]
    fn compaction_keeps_the_live_rows_only() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("state");
        let (mut journal, _) = Journal::open(&path).unwrap();
        let mut tables = Tables::new();
        let big = "v".repeat(1000);
        for round in 0..(2 * COMPACT_MIN_BYTES / 1000 / 100 + 1) {
            let batch: Vec<(String, Option<String>)> = (0..100)
                .map(|key| {
                    (
                        key.to_string(),
                        (key % 10 != 0 || round % 2 == 0).then(|| format!("{round}{big}")),
                    )
                })
                .collect();
            journal
                .append(
                    batch
                        .iter()
                        .map(|(key, value)| ("t", key.as_str(), value.as_deref().map(str::as_bytes))),
                )
                .unwrap();
            let rows = tables.entry("t".to_owned()).or_default();
            for (key, value) in batch {
                let before = rows.get(&key).cloned();
                match &value {
                    Some(value) => drop(rows.insert(key.clone(), value.clone().into_bytes())),
                    None => drop(rows.remove(&key)),
                }
                journal.account("t", &key, before.as_deref(), value.as_deref().map(str::as_bytes));
            }
        }
        assert!(journal.wants_compaction(), "length {}", journal.length());
        journal.compact(&tables).unwrap();
        assert!(!journal.wants_compaction());
        assert!(journal.length() < COMPACT_MIN_BYTES / 2, "{}", journal.length());
        rows(&mut journal, &[("t", "new", Some("after compaction"))]);
        drop(journal);
        assert!(!compact_path(&path).exists());
        let (_, opened) = Journal::open(&path).unwrap();
        let mut expected = tables;
        expected
            .get_mut("t")
            .unwrap()
            .insert("new".to_owned(), b"after compaction".to_vec());
        assert_eq!(opened.tables, expected);
    }

    #[test]
    fn a_second_open_of_the_same_file_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("state");
        let (_journal, _) = Journal::open(&path).unwrap();
        assert!(Journal::open(&path).is_err());
    }

    #[test]
    fn a_file_of_another_kind_is_refused_untouched() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("state");
        std::fs::write(&path, b"[node]\nname = \"tcf-1\"\n").unwrap();
        assert_eq!(Journal::open(&path).unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(std::fs::read(&path).unwrap(), b"[node]\nname = \"tcf-1\"\n");
    }

    #[test]
    fn a_redb_store_of_an_earlier_version_is_imported_and_kept() {
        use redb::TableDefinition;
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("state.redb");
        {
            let database = redb::Database::create(&path).unwrap();
            let transaction = database.begin_write().unwrap();
            {
                let definition: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("bindings");
                let mut table = transaction.open_table(definition).unwrap();
                table.insert("1001", b"{\"user\":\"1001\"}".as_slice()).unwrap();
                table.insert("1002", b"{\"user\":\"1002\"}".as_slice()).unwrap();
                let definition: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("secrets");
                let mut table = transaction.open_table(definition).unwrap();
                table.insert("nonce_key", b"\"abc\"".as_slice()).unwrap();
            }
            transaction.commit().unwrap();
        }
        let (_, opened) = Journal::open(&path).unwrap();
        assert_eq!(opened.imported_rows, 3);
        assert_eq!(value(&opened.tables, "bindings", "1002"), Some("{\"user\":\"1002\"}"));
        assert_eq!(value(&opened.tables, "secrets", "nonce_key"), Some("\"abc\""));
        assert!(imported_path(&path).exists());
        // From now on it is a journal.
        let (_, opened) = Journal::open(&path).unwrap();
        assert_eq!(opened.imported_rows, 0);
        assert_eq!(value(&opened.tables, "bindings", "1001"), Some("{\"user\":\"1001\"}"));
    }
}
