//! A memtable in front of redb: rows the commit thread applied but redb does not hold yet.
//!
//! Two layers. New rows go to `active`. To write them, the commit thread freezes `active`
//! into `frozen` and hands that to the settler thread, which writes it to redb in one
//! transaction and then releases it; meanwhile new rows collect in a fresh `active`, so the
//! commit thread never waits for redb. Readers look in `active`, then `frozen`, then redb.
//! A row is always in at least one of the three: the frozen layer is dropped only after
//! redb committed it, and a reader opens its redb transaction after looking at the layers.

use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;

/// One layer: table key → row, or `None` for a deletion.
pub type Layer<T> = HashMap<Vec<u8>, Option<Arc<T>>>;

#[derive(Debug)]
pub struct Overlay<T> {
    layers: RwLock<Layers<T>>,
}

#[derive(Debug)]
struct Layers<T> {
    active: Layer<T>,
    frozen: Arc<Layer<T>>,
}

impl<T> Default for Overlay<T> {
    fn default() -> Self {
        Overlay { layers: RwLock::new(Layers { active: HashMap::new(), frozen: Arc::new(HashMap::new()) }) }
    }
}

impl<T> Overlay<T> {
    /// `Some(row)` when the overlay knows the key (`Some(None)`: deleted), `None` to ask redb.
    pub fn get(&self, key: &[u8]) -> Option<Option<Arc<T>>> {
        let layers = self.layers.read();
        layers.active.get(key).or_else(|| layers.frozen.get(key)).cloned()
    }

    pub fn insert(&self, key: Vec<u8>, row: Option<Arc<T>>) {
        self.layers.write().active.insert(key, row);
    }

    /// Rows waiting in the active layer.
    pub fn active_len(&self) -> usize {
        self.layers.read().active.len()
    }

    /// Moves the active layer into the frozen one and returns the frozen layer to write. The
    /// frozen layer is normally empty here; when an earlier write failed it still holds that
    /// write's rows, and the newer active rows are merged over them so they are written again.
    pub fn freeze(&self) -> Arc<Layer<T>> {
        let mut layers = self.layers.write();
        let active = std::mem::take(&mut layers.active);
        if layers.frozen.is_empty() {
            layers.frozen = Arc::new(active);
        } else if !active.is_empty() {
            let mut merged: Layer<T> = layers.frozen.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            merged.extend(active);
            layers.frozen = Arc::new(merged);
        }
        layers.frozen.clone()
    }

    /// redb now holds `written`: forget it, unless a later freeze replaced it.
    pub fn release(&self, written: &Arc<Layer<T>>) {
        let mut layers = self.layers.write();
        if Arc::ptr_eq(&layers.frozen, written) {
            layers.frozen = Arc::new(HashMap::new());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_see_active_over_frozen_until_released() {
        let o: Overlay<u32> = Overlay::default();
        o.insert(b"a".to_vec(), Some(Arc::new(1)));
        o.insert(b"b".to_vec(), Some(Arc::new(1)));
        let frozen = o.freeze();
        assert_eq!(frozen.len(), 2);
        assert_eq!(o.active_len(), 0);
        o.insert(b"a".to_vec(), Some(Arc::new(2)));
        o.insert(b"b".to_vec(), None);
        assert_eq!(o.get(b"a").flatten().as_deref(), Some(&2));
        assert_eq!(o.get(b"b"), Some(None), "a deletion in the active layer hides the frozen row");
        o.release(&frozen);
        assert_eq!(o.get(b"a").flatten().as_deref(), Some(&2));
        assert_eq!(o.get(b"c"), None);
    }

    #[test]
    fn a_failed_write_is_merged_into_the_next_freeze() {
        let o: Overlay<u32> = Overlay::default();
        o.insert(b"a".to_vec(), Some(Arc::new(1)));
        o.insert(b"b".to_vec(), Some(Arc::new(1)));
        let failed = o.freeze();
        o.insert(b"b".to_vec(), Some(Arc::new(2)));
        let next = o.freeze();
        assert_eq!(next.len(), 2);
        assert_eq!(next.get(b"a".as_slice()).cloned().flatten().as_deref(), Some(&1));
        assert_eq!(next.get(b"b".as_slice()).cloned().flatten().as_deref(), Some(&2), "the newer row wins");
        o.release(&failed);
        assert_eq!(o.get(b"a").flatten().as_deref(), Some(&1), "releasing a replaced layer keeps the merged one");
        o.release(&next);
        assert_eq!(o.get(b"a"), None);
    }
}
