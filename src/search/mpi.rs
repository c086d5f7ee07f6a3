//! The [`Comm`] of a search started by `mpirun`/`srun` (feature `mpi`): MPI through rsmpi.
//!
//! Only this file talks to MPI. Messages are byte buffers ([`super::dist`] encodes them): a
//! broadcast is the length then the bytes, a gather is the lengths then an `MPI_Gatherv`.

use super::dist::Comm;
use mpi::collective::Root;
use mpi::datatype::PartitionMut;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::{Count, Threading};
use std::sync::Mutex;

/// The world communicator. Calls are serialised by a mutex, which is what the threading level
/// asked for at start (`MPI_THREAD_SERIALIZED`) allows.
pub struct MpiComm {
    world: Mutex<World>,
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
    // Dropped last: `MPI_Finalize`.
    _universe: mpi::environment::Universe,
}

struct World(SimpleCommunicator);

// SAFETY: the communicator is a handle that MPI lets any thread use as long as no two calls
// run at once (MPI_THREAD_SERIALIZED, checked at start); every use goes through the mutex.
unsafe impl Send for World {}

impl std::fmt::Debug for MpiComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MpiComm(rank {} of {})", self.rank, self.size)
    }
}

impl MpiComm {
    /// Starts MPI (once per process); an error when the library cannot start or does not offer
    /// serialised threading.
    pub fn init() -> Result<Self, String> {
        let (universe, level) = mpi::initialize_with_threading(Threading::Serialized).ok_or(
            "MPI could not be started (MPI_Init_thread failed, or MPI was already started)",
        )?;
        if !matches!(level, Threading::Serialized | Threading::Multiple) {
            return Err(format!(
                "the MPI library offers threading level {level:?}, the search needs Serialized"
            ));
        }
        let world = universe.world();
        let local = world.split_shared(world.rank());
        Ok(MpiComm {
            rank: world.rank() as usize,
            size: world.size() as usize,
            local_rank: local.rank() as usize,
            local_size: local.size() as usize,
            world: Mutex::new(World(world)),
            _universe: universe,
        })
    }

    /// This rank's index among the ranks on its node (`MPI_COMM_TYPE_SHARED`).
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// The number of ranks on this rank's node.
    pub fn local_size(&self) -> usize {
        self.local_size
    }

    /// Ends every rank of the job (`MPI_Abort`): for a failure outside the search's own
    /// protocol, where the other ranks could otherwise wait forever.
    pub fn abort(&self, code: i32) -> ! {
        self.with(|w| w.abort(code))
    }

    fn with<T>(&self, f: impl FnOnce(&SimpleCommunicator) -> T) -> T {
        let w = self.world.lock().unwrap_or_else(|e| e.into_inner());
        f(&w.0)
    }
}

impl Comm for MpiComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn broadcast(&self, buf: &mut Vec<u8>) {
        self.with(|w| {
            let root = w.process_at_rank(0);
            let mut len = buf.len() as u64;
            root.broadcast_into(&mut len);
            buf.resize(len as usize, 0);
            root.broadcast_into(&mut buf[..]);
        })
    }

    fn gather(&self, mine: &[u8]) -> Vec<Vec<u8>> {
        self.with(|w| {
            let root = w.process_at_rank(0);
            let len = mine.len() as Count;
            if self.rank != 0 {
                root.gather_into(&len);
                root.gather_varcount_into(mine);
                return Vec::new();
            }
            let mut counts = vec![0 as Count; self.size];
            root.gather_into_root(&len, &mut counts[..]);
            let displs: Vec<Count> = counts
                .iter()
                .scan(0, |acc, &c| {
                    let d = *acc;
                    *acc += c;
                    Some(d)
                })
                .collect();
            let total: usize = counts.iter().map(|&c| c as usize).sum();
            let mut all = vec![0u8; total];
            {
                let mut part = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
                root.gather_varcount_into_root(mine, &mut part);
            }
            counts
                .iter()
                .zip(&displs)
                .map(|(&c, &d)| all[d as usize..(d + c) as usize].to_vec())
                .collect()
        })
    }
}
