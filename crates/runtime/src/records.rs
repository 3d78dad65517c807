//! Records of sandboxes and containers: `<dir>/<id>/<file>` JSON files, the runtime's
//! source of truth across restarts, with every record also held in memory. The kubelet
//! lists and inspects containers many times a second; answering from disk cost a read
//! and a parse of every record for each call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{io_err, Error};

/// A directory of records of one kind, loaded once when opened and written through on
/// every change. One runtime owns a state directory at a time.
#[derive(Clone, Debug)]
pub struct RecordDir<T> {
    /// The directory.
    pub dir: PathBuf,
    file: &'static str,
    /// What a record is, for errors ("pod sandbox", "container").
    what: &'static str,
    records: Arc<RwLock<HashMap<String, T>>>,
}

impl<T: Clone + Serialize + DeserializeOwned> RecordDir<T> {
    /// Opens (creating) `dir` and loads every readable record in it.
    pub fn open(dir: PathBuf, file: &'static str, what: &'static str) -> Result<Self, Error> {
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut records = HashMap::new();
        for e in std::fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let rec = std::fs::read(e.path().join(file))
                .ok()
                .and_then(|b| serde_json::from_slice::<T>(&b).ok());
            if let Some(r) = rec {
                records.insert(id, r);
            }
        }
        Ok(RecordDir {
            dir,
            file,
            what,
            records: Arc::new(RwLock::new(records)),
        })
    }

    /// The record with this ID or unique ID prefix (as crictl accepts prefixes).
    pub fn get(&self, id: &str) -> Result<T, Error> {
        let records = self.records.read().expect("records lock");
        if let Some(r) = records.get(id) {
            return Ok(r.clone());
        }
        let mut hits = records
            .iter()
            .filter(|(k, _)| !id.is_empty() && k.starts_with(id));
        match (hits.next(), hits.next()) {
            (Some((_, r)), None) => Ok(r.clone()),
            _ => Err(Error::NotFound(format!("{} {id}", self.what))),
        }
    }

    /// Every record, in no particular order.
    pub fn list(&self) -> Vec<T> {
        let records = self.records.read().expect("records lock");
        records.values().cloned().collect()
    }

    /// The records for which `keep` holds.
    pub fn filter(&self, keep: impl Fn(&T) -> bool) -> Vec<T> {
        let records = self.records.read().expect("records lock");
        records.values().filter(|r| keep(r)).cloned().collect()
    }

    /// Writes a record atomically (a new file renamed over the old), then holds it. The
    /// record's directory must exist.
    pub fn save(&self, id: &str, record: &T) -> Result<(), Error> {
        let mut records = self.records.write().expect("records lock");
        let p = self.dir.join(id).join(self.file);
        write_atomic(&p, &serde_json::to_vec_pretty(record).expect("json"))?;
        records.insert(id.to_string(), record.clone());
        Ok(())
    }

    /// Forgets a record and removes its directory.
    pub fn remove(&self, id: &str) -> Result<(), Error> {
        let mut records = self.records.write().expect("records lock");
        records.remove(id);
        let dir = self.dir.join(id);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&dir)(e)),
            _ => Ok(()),
        }
    }
}

fn write_atomic(p: &Path, data: &[u8]) -> Result<(), Error> {
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, p).map_err(io_err(p))
}

#[cfg(test)]
mod tests {
    use super::RecordDir;

    #[test]
    fn records_survive_a_reopen_and_resolve_prefixes() {
        let d = tempfile::tempdir().unwrap();
        let open = || RecordDir::<Vec<u32>>::open(d.path().join("r"), "r.json", "thing").unwrap();
        let r = open();
        for (id, v) in [("abc1", vec![1]), ("abd2", vec![2])] {
            std::fs::create_dir_all(r.dir.join(id)).unwrap();
            r.save(id, &v).unwrap();
        }
        r.save("abc1", &vec![1, 1]).unwrap();
        // A second runtime on the same directory (a restart) sees what the first wrote.
        let again = open();
        assert_eq!(again.get("abc1").unwrap(), vec![1, 1]);
        assert_eq!(again.get("abd").unwrap(), vec![2]);
        assert!(again.get("ab").is_err(), "an ambiguous prefix");
        assert!(again.get("").is_err());
        assert_eq!(again.list().len(), 2);
        again.remove("abc1").unwrap();
        assert!(!again.dir.join("abc1").exists());
        assert!(again.get("abc1").is_err());
        assert_eq!(open().list(), vec![vec![2]]);
        // A record whose directory is gone is not held.
        assert!(again.save("gone", &vec![3]).is_err());
        assert!(again.get("gone").is_err());
    }
}
