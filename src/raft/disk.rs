//! The disk seam: where the redb database lives. A real file (fsync on commit) in production;
//! a simulated disk under madsim that survives a node restart and loses unsynced writes.

use std::path::Path;

/// redb's page cache: its default (1 GiB) let a manager's RSS grow with every page it ever
/// touched; the working set (the log since the last snapshot, the snapshot) is far smaller.
pub const DB_CACHE_BYTES: usize = 32 << 20;

/// Opens (or creates) the manager's database at `path`.
#[cfg(not(madsim))]
pub fn open_database(path: &Path) -> Result<redb::Database, redb::DatabaseError> {
    redb::Database::builder()
        .set_cache_size(DB_CACHE_BYTES)
        .create(path)
}

/// Opens (or creates) the Raft log's write-ahead file at `path` (`raft::wal`).
#[cfg(not(madsim))]
pub fn open_wal(path: &Path) -> std::io::Result<Box<dyn redb::StorageBackend>> {
    let existed = path.exists();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    if !existed {
        // The new file's name must survive a crash too.
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(Box::new(WalFile(file)))
}

#[cfg(madsim)]
pub fn open_wal(path: &Path) -> std::io::Result<Box<dyn redb::StorageBackend>> {
    Ok(Box::new(sim::SimBackend::open(path)))
}

/// A plain file: written in place, fdatasync'd on `sync_data`.
#[cfg(not(madsim))]
#[derive(Debug)]
struct WalFile(std::fs::File);

#[cfg(not(madsim))]
impl redb::StorageBackend for WalFile {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.0, out, offset)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.0, data, offset)
    }
}

/// True when a database file exists at `path`.
#[cfg(not(madsim))]
pub fn exists(path: &Path) -> bool {
    path.exists()
}

#[cfg(madsim)]
pub fn exists(path: &Path) -> bool {
    sim::exists(path)
}

/// The size of the database file at `path`, if there is one.
#[cfg(not(madsim))]
pub fn len(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

#[cfg(madsim)]
pub fn len(path: &Path) -> Option<u64> {
    sim::len(path)
}

/// Replaces the small file at `path` with `bytes` durably: written to a temporary file,
/// fsynced, renamed over the old one and the directory fsynced, so a crash leaves either
/// the old or the new content, never a mix.
#[cfg(not(madsim))]
pub fn write_durable(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_replacing(path, bytes, 0o644)
}

/// `write_durable` for a secret: the file is created with mode 0600.
#[cfg(not(madsim))]
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_replacing(path, bytes, 0o600)
}

#[cfg(not(madsim))]
fn write_replacing(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    // A new file of our own (never one that is there already, a symlink planted in a shared
    // directory included), with a name no other writer uses.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let tmp = std::path::PathBuf::from(tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have taken bits off.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)?;
    // A bare file name's parent is "": the current directory.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Creates `dir` (and its parents) if needed, readable only by its owner.
#[cfg(not(madsim))]
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Removes a file written by `write_durable`/`write_private`; a missing one is fine.
#[cfg(not(madsim))]
pub fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The content of a file written by `write_durable`, or `None` if there is none.
#[cfg(not(madsim))]
pub fn read_durable(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(madsim)]
pub fn write_durable(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    sim::write_file(path, bytes)
}

#[cfg(madsim)]
pub fn read_durable(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    Ok(sim::read_file(path))
}

#[cfg(madsim)]
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    sim::write_file(path, bytes)
}

#[cfg(madsim)]
pub fn create_private_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(madsim)]
pub fn remove(path: &Path) -> std::io::Result<()> {
    sim::remove_file(path);
    Ok(())
}

#[cfg(madsim)]
pub fn open_database(path: &Path) -> Result<redb::Database, redb::DatabaseError> {
    redb::Database::builder()
        .set_cache_size(DB_CACHE_BYTES)
        .create_with_backend(sim::SimBackend::open(path))
}

#[cfg(madsim)]
pub mod sim {
    //! A simulated disk keyed by path. `durable` is what an fsync has made permanent; `open`
    //! starts a new incarnation from it (unsynced writes are lost, as after a power cut) and
    //! bumps an epoch so handles held by a killed incarnation get I/O errors instead of
    //! writing into the new one (redb's clean close on drop would otherwise persist data that
    //! was never synced).

    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::io;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};

    #[derive(Debug, Default)]
    struct DiskState {
        epoch: u64,
        current: Vec<u8>,
        durable: Vec<u8>,
        /// Byte ranges of `current` written (or resized) since the last sync: a sync copies
        /// only these, not the whole file (a whole copy per fsync dominated the profile).
        dirty: Vec<(usize, usize)>,
    }

    impl DiskState {
        fn mark(&mut self, start: usize, end: usize) {
            if start < end {
                self.dirty.push((start, end));
            }
        }

        fn sync(&mut self) {
            let len = self.current.len();
            self.durable.resize(len, 0);
            for (start, end) in std::mem::take(&mut self.dirty) {
                let end = end.min(len);
                if start < end {
                    self.durable[start..end].copy_from_slice(&self.current[start..end]);
                }
            }
        }
    }

    type Disks = BTreeMap<PathBuf, Arc<Mutex<DiskState>>>;

    /// A broken disk, for every file under one directory.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct DiskFault {
        /// How many of the next fsyncs fail with EIO (`u32::MAX`: all of them). What a
        /// failed fsync was to persist is lost, as Linux drops dirty pages after a failed
        /// writeback: the "fsyncgate" lesson, a later fsync that succeeds says nothing about
        /// the writes before it, so a daemon must not carry on after one.
        pub fail_syncs: u32,
        /// The disk is full: every write fails with ENOSPC (as on a copy-on-write or
        /// thin-provisioned filesystem, where overwriting also needs new blocks).
        pub full: bool,
    }

    #[derive(Debug, Default)]
    struct FaultState {
        fault: DiskFault,
        /// I/O errors returned so far, by file.
        errors: BTreeMap<PathBuf, u64>,
    }

    thread_local! {
        // madsim runs a whole simulation on one thread, so a thread-local set of disks
        // isolates simulations that the test harness runs in parallel.
        static DISKS: RefCell<Disks> = const { RefCell::new(BTreeMap::new()) };
        static FAULTS: RefCell<BTreeMap<PathBuf, FaultState>> = const { RefCell::new(BTreeMap::new()) };
    }

    /// Forgets every simulated disk and disk fault of this simulation (call at the start of
    /// each run).
    pub fn reset_all() {
        DISKS.with(|d| d.borrow_mut().clear());
        FAULTS.with(|f| f.borrow_mut().clear());
    }

    /// Breaks the disk holding `dir` (the default fault repairs it); returns the I/O errors
    /// the previous fault of that disk returned, by file.
    pub fn set_fault(dir: &Path, fault: DiskFault) -> BTreeMap<PathBuf, u64> {
        FAULTS.with(|f| {
            let mut f = f.borrow_mut();
            let errors = f.remove(dir).map(|s| s.errors).unwrap_or_default();
            if fault != DiskFault::default() {
                f.insert(
                    dir.to_path_buf(),
                    FaultState {
                        fault,
                        errors: errors.clone(),
                    },
                );
            }
            errors
        })
    }

    /// Whether an operation on `path` fails now (counting the error): `sync` for an fsync.
    fn fails(path: &Path, sync: bool) -> Option<io::Error> {
        FAULTS.with(|f| {
            let mut f = f.borrow_mut();
            let (_, st) = f.iter_mut().find(|(dir, _)| path.starts_with(dir))?;
            let err = if st.fault.full && !sync {
                enospc()
            } else if sync && st.fault.fail_syncs > 0 {
                if st.fault.fail_syncs != u32::MAX {
                    st.fault.fail_syncs -= 1;
                }
                eio()
            } else {
                return None;
            };
            *st.errors.entry(path.to_path_buf()).or_default() += 1;
            Some(err)
        })
    }

    fn enospc() -> io::Error {
        io::Error::new(io::ErrorKind::StorageFull, "simulated disk full (ENOSPC)")
    }

    fn eio() -> io::Error {
        io::Error::other("simulated fsync failure (EIO); unsynced writes lost")
    }

    /// A whole-file write that is durable at once (the real path fsyncs before renaming).
    pub fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
        if let Some(e) = fails(path, false).or_else(|| fails(path, true)) {
            return Err(e);
        }
        let disk = DISKS.with(|d| d.borrow_mut().entry(path.to_path_buf()).or_default().clone());
        let mut d = disk.lock().unwrap();
        d.current = bytes.to_vec();
        d.durable = bytes.to_vec();
        d.dirty.clear();
        Ok(())
    }

    pub fn read_file(path: &Path) -> Option<Vec<u8>> {
        DISKS.with(|d| d.borrow().get(path).map(|d| d.lock().unwrap().durable.clone()))
    }

    pub fn remove_file(path: &Path) {
        DISKS.with(|d| d.borrow_mut().remove(path));
    }

    pub fn len(path: &Path) -> Option<u64> {
        DISKS.with(|d| {
            d.borrow()
                .get(path)
                .map(|d| d.lock().unwrap().durable.len() as u64)
        })
    }

    /// Replaces every copy of `from` in the durable bytes of `path` with `to` (same length):
    /// a flipped byte on a simulated disk. Returns how many copies changed.
    pub fn corrupt(path: &Path, from: &[u8], to: &[u8]) -> usize {
        assert_eq!(from.len(), to.len());
        let Some(disk) = DISKS.with(|d| d.borrow().get(path).cloned()) else {
            return 0;
        };
        let mut d = disk.lock().unwrap();
        let mut n = 0;
        let mut i = 0;
        while i + from.len() <= d.durable.len() {
            if &d.durable[i..i + from.len()] == from {
                d.durable[i..i + to.len()].copy_from_slice(to);
                n += 1;
            }
            i += 1;
        }
        n
    }

    /// True when a simulated file exists at `path`.
    pub fn exists(path: &Path) -> bool {
        DISKS.with(|d| d.borrow().contains_key(path))
    }

    #[derive(Debug)]
    pub struct SimBackend {
        disk: Arc<Mutex<DiskState>>,
        epoch: u64,
        path: PathBuf,
    }

    impl SimBackend {
        pub fn open(path: &Path) -> Self {
            let disk = DISKS.with(|d| d.borrow_mut().entry(path.to_path_buf()).or_default().clone());
            let epoch = {
                let mut d = disk.lock().unwrap();
                d.epoch += 1;
                d.current = d.durable.clone();
                d.dirty.clear();
                d.epoch
            };
            SimBackend {
                disk,
                epoch,
                path: path.to_path_buf(),
            }
        }

        fn with<T>(&self, f: impl FnOnce(&mut DiskState) -> T) -> io::Result<T> {
            let mut d = self.disk.lock().unwrap();
            if d.epoch != self.epoch {
                return Err(io::Error::other(
                    "simulated disk: handle of a crashed incarnation",
                ));
            }
            Ok(f(&mut d))
        }
    }

    impl redb::StorageBackend for SimBackend {
        fn len(&self) -> io::Result<u64> {
            self.with(|d| d.current.len() as u64)
        }

        fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
            self.with(|d| {
                let start = offset as usize;
                let end = start + out.len();
                if end > d.current.len() {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past end"));
                }
                out.copy_from_slice(&d.current[start..end]);
                Ok(())
            })?
        }

        fn set_len(&self, len: u64) -> io::Result<()> {
            if let Some(e) = fails(&self.path, false) {
                return Err(e);
            }
            self.with(|d| {
                let (old, new) = (d.current.len(), len as usize);
                d.current.resize(new, 0);
                d.mark(old.min(new), old.max(new));
            })
        }

        fn sync_data(&self) -> io::Result<()> {
            if let Some(e) = fails(&self.path, true) {
                return self.with(|d| {
                    d.current = d.durable.clone();
                    d.dirty.clear();
                    Err(e)
                })?;
            }
            self.with(DiskState::sync)
        }

        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            if let Some(e) = fails(&self.path, false) {
                return Err(e);
            }
            self.with(|d| {
                let start = offset as usize;
                let end = start + data.len();
                if end > d.current.len() {
                    d.current.resize(end, 0);
                }
                d.current[start..end].copy_from_slice(data);
                d.mark(start, end);
            })
        }
    }
}
