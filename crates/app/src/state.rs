//! The commit thread's state machine: one for every ledgered action. Operations and ledger
//! entries are routed to the memory and cache state ([`crate::memory::state`]) or to the
//! governance state ([`crate::governance`]); crash recovery, replay, rollback and restore all
//! go through [`DaenaState::replay`], which refuses an action it does not know.

use crate::cas::CasOp;
use crate::commit::StateMachine;
use crate::error::{AppError, AppResult};
use crate::governance::{GovOp, GovState, NO_STATE};
use crate::memory::state::{MemoryOp, MemoryState};
use daena_core::ledger::entry::{Entry, NewEntry};
use daena_core::time::Micros;
use daena_store::ledger::Receipt;
use daena_store::state::{DocScope, StateRows};

/// A change to the service's state, one variant per capability.
#[derive(Debug)]
pub enum StateOp {
    /// A memory mutation.
    Memory(Box<MemoryOp>),
    /// A cache store or eviction.
    Cas(Box<CasOp>),
    /// A governance change: keys, shreds, limits, the write switch, drills.
    Gov(Box<GovOp>),
}

/// An operation for the service's commit thread.
pub type Op = crate::commit::Op<StateOp>;

impl From<MemoryOp> for Op {
    fn from(op: MemoryOp) -> Op {
        Op::State(StateOp::Memory(Box::new(op)))
    }
}

impl From<CasOp> for Op {
    fn from(op: CasOp) -> Op {
        Op::State(StateOp::Cas(Box::new(op)))
    }
}

impl From<GovOp> for Op {
    fn from(op: GovOp) -> Op {
        Op::State(StateOp::Gov(Box::new(op)))
    }
}

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
    type Op = StateOp;

    fn prepare(&mut self, op: &mut Op) -> AppResult<Vec<NewEntry>> {
        match op {
            Op::State(StateOp::Gov(g)) => self.gov.prepare(g).map(|e| vec![e]),
            Op::State(StateOp::Memory(m)) => self.memory.prepare(m).map(|e| vec![e]),
            Op::State(StateOp::Cas(c)) => self.memory.prepare_cas(c),
            // Plain entries change no state, so they may only be events: a stateful action
            // appended this way would be in the ledger without its effect.
            Op::Append(entries) | Op::Genesis(entries) => {
                if let Some(e) = entries.iter().find(|e| !NO_STATE.contains(&e.action.as_str())) {
                    return Err(AppError::internal(format!(
                        "{} changes state and must be submitted as an operation, not as a plain entry",
                        e.action
                    )));
                }
                Ok(std::mem::take(entries))
            }
        }
    }

    fn apply(&mut self, batch: Vec<(Op, Vec<Receipt>)>) -> AppResult<()> {
        let mut gov = Vec::new();
        let mut memory = Vec::new();
        for (op, receipts) in &batch {
            match (op, receipts.first()) {
                (Op::State(StateOp::Gov(g)), Some(r)) => gov.push((&**g, r)),
                (Op::State(StateOp::Memory(m)), Some(r)) => memory.push((&**m, r.seq)),
                _ => {}
            }
        }
        self.gov.apply(&gov);
        let last_seq = batch.iter().flat_map(|(_, r)| r.iter().map(|r| r.seq)).max();
        self.memory.apply(&memory, last_seq)
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

    fn chain_rows(&mut self, ops: &[(&Op, u64)], ts: Micros) -> AppResult<StateRows> {
        let (mut memory, mut gov) = (Vec::new(), Vec::new());
        for (op, seq) in ops {
            match op {
                Op::State(StateOp::Memory(m)) => memory.push((&**m, *seq)),
                Op::State(StateOp::Gov(g)) => gov.push((&**g, *seq)),
                _ => {}
            }
        }
        let mut rows = self.memory.chain_rows(&memory)?;
        rows.docs = self.gov.chain_docs(&gov, ts)?;
        Ok(rows)
    }

    fn kept_docs(&self) -> &'static [DocScope] {
        &crate::governance::KEPT_DOCS
    }

    fn all_rows(&mut self, page: &mut dyn FnMut(StateRows) -> AppResult<()>) -> AppResult<()> {
        self.memory.all_rows(page)?;
        page(StateRows { docs: self.gov.kept_docs()?, ..StateRows::default() })
    }
}
