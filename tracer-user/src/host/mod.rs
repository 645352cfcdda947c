//! What the host tells besides the kernel programs: sock_diag dumps and lookups inside each network namespace, the processes holding sockets (/proc), cgroups, the clocks; the Kubernetes names a node keeps, the recording file sessions are written to and replayed from, and the daemon's history store.

pub mod cgroups;
pub mod clock;
pub mod follow;
pub mod history;
pub mod kube;
pub mod last_io;
pub mod netns;
pub mod owners;
pub mod recording_file;
pub mod snapshot;
pub mod sock_diag;
pub mod workers;
