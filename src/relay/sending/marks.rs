//! The relay's side of the sent marks ([`crate::store::sent_marks`]): what the earlier relays may
//! have sent, read once before this relay raises any mark, and the raising itself, ahead of the
//! rows so that most batches write nothing.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::OnceCell;

use crate::store::sent_marks::{self, ANY_STREAM};
use crate::store::{Store, StoreError};

/// How far past a batch's highest id a mark is raised: one write covers the next batches of the
/// stream, and after a restart at most this many ids' rows of a stream are looked up that no
/// relay had sent.
const AHEAD: i64 = 4096;

/// One relay's marks.
#[derive(Debug, Default)]
pub(crate) struct SentMarks {
    /// The marks as the earlier relays left them.
    earlier: OnceCell<HashMap<String, i64>>,
    /// How far this relay has raised each stream's mark.
    raised: Mutex<HashMap<String, i64>>,
}

impl SentMarks {
    /// The marks the earlier relays left, read the first time.
    async fn earlier_marks(&self, store: &Store) -> Result<&HashMap<String, i64>, StoreError> {
        self.earlier
            .get_or_try_init(|| async {
                let marks = store.read(sent_marks::read).await?;
                *self.raised.lock().expect("sent marks lock") = marks.clone();
                Ok(marks)
            })
            .await
    }

    /// The highest id of `stream` an earlier relay may have handed to a publish.
    pub(crate) async fn earlier(&self, store: &Store, stream: &str) -> Result<i64, StoreError> {
        let marks = self.earlier_marks(store).await?;
        let mark = |name: &str| marks.get(name).copied().unwrap_or(0);
        Ok(mark(stream).max(mark(ANY_STREAM)))
    }

    /// Makes `stream`'s mark cover `last_id` before rows up to it are sent: raised to
    /// `last_id + AHEAD` when it is below.
    pub(crate) async fn cover(
        &self,
        store: &Store,
        stream: &str,
        last_id: i64,
    ) -> Result<(), StoreError> {
        self.earlier_marks(store).await?;
        let raised = self
            .raised
            .lock()
            .expect("sent marks lock")
            .get(stream)
            .copied();
        if raised.is_some_and(|mark| mark >= last_id) {
            return Ok(());
        }
        let (name, to) = (stream.to_owned(), last_id + AHEAD);
        store
            .write(move |tx| sent_marks::raise(tx, &name, to))
            .await?;
        let mut raised = self.raised.lock().expect("sent marks lock");
        let mark = raised.entry(stream.to_owned()).or_insert(0);
        *mark = (*mark).max(to);
        Ok(())
    }
}
