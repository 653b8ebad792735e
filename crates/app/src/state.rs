//! The commit thread's state machine: one for every ledgered action. Operations and ledger
//! entries are routed to the memory and cache state ([`crate::memory::state`]) or to the
//! governance state ([`crate::governance`]); crash recovery, replay, rollback and restore all
//! go through [`DaenaState::replay`], which refuses an action it does not know.

use crate::commit::{Op, StateMachine};
use crate::error::{AppError, AppResult};
use crate::governance::{GovState, NO_STATE};
use crate::memory::state::MemoryState;
use daena_core::ledger::entry::{Entry, NewEntry};
use daena_store::ledger::Receipt;

pub struct DaenaState {
    memory: MemoryState,
    gov: GovState,
}

impl DaenaState {
    pub fn new(memory: MemoryState, gov: GovState) -> DaenaState {
        DaenaState { memory, gov }
    }
}

impl StateMachine for DaenaState {
    fn prepare(&mut self, op: &mut Op) -> AppResult<Vec<NewEntry>> {
        match op {
            Op::Gov(g) => self.gov.prepare(g).map(|e| vec![e]),
            // Plain entries change no state, so they may only be events: a stateful action
            // appended this way would be in the ledger without its effect.
            Op::Append(entries) | Op::Genesis(entries) => {
                if let Some(e) = entries.iter().find(|e| !NO_STATE.contains(&e.action.as_str())) {
                    return Err(AppError::internal(format!(
                        "{} changes state and must be submitted as an operation, not as a plain entry",
                        e.action
                    )));
                }
                self.memory.prepare(op)
            }
            other => self.memory.prepare(other),
        }
    }

    fn apply(&mut self, batch: Vec<(Op, Vec<Receipt>)>) -> AppResult<()> {
        self.gov.apply(&batch);
        self.memory.apply(&batch)
    }

    fn abort(&mut self) {
        self.gov.abort();
        self.memory.abort();
    }

    fn replay(&mut self, e: &Entry) -> AppResult<()> {
        if MemoryState::replays(&e.action) {
            return self.memory.replay(e);
        }
        if !self.gov.replay(e)? && !NO_STATE.contains(&e.action.as_str()) {
            return Err(AppError::internal(format!(
                "ledger entry {} has the action {:?}, which this version of Daena does not know; \
                 replaying past it would leave its effect out, so the replay stops here (use the \
                 version that wrote it)",
                e.seq, e.action
            )));
        }
        self.memory.mark_applied(e.seq);
        Ok(())
    }

    fn applied_seq(&self) -> u64 {
        self.memory.applied_seq()
    }

    fn settle(&mut self) -> AppResult<()> {
        self.memory.settle()
    }

    fn flush(&mut self) -> AppResult<()> {
        self.memory.flush()
    }

    fn flush_background(&mut self) -> AppResult<bool> {
        self.memory.flush_background()
    }
}
