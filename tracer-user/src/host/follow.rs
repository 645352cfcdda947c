//! The timewait follower's I/O: runs the sock_diag dumps the tracker asks for, one per namespace and family, inside the namespace concerned.

use std::collections::HashMap;

use crate::{
    host::clock,
    host::netns::NetnsPaths,
    host::sock_diag::{self, Diag, DiagError},
    model::tracker::DiagRequest,
    model::tracker::Sightings,
};
use tracer_common::TcpState;

/// How often followed sockets are looked up. The linger times do not
/// depend on it (they are dated from the kernel's timers); it bounds how
/// late a record is written and how often a large timewait table is read.
pub const DIAG_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// One answered request: timewait sockets by cookie (`None` if the dump
/// failed), and when the dump ended.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DiagAnswer {
    pub request: DiagRequest,
    pub timewait: Option<Sightings>,
    pub done_ns: u64,
}

/// Keeps one sock_diag socket per namespace while something there is
/// followed. Each socket pins its namespace, so unused ones are closed.
#[derive(Default)]
pub struct Follower {
    paths: NetnsPaths,
    sockets: HashMap<u32, Diag>,
    /// Lookups that failed (the dump failed, or the namespace was found
    /// nowhere), in all.
    pub failed: u64,
    /// Failures, reported once.
    warned: bool,
    /// That report, for the caller to show.
    pub warning: Option<String>,
}

impl Follower {
    /// Namespaces asked for and found nowhere, in all.
    pub fn netns_not_found(&self) -> u64 {
        self.paths.not_found
    }

    fn socket(&mut self, inum: u32) -> Result<Option<&mut Diag>, DiagError> {
        if !self.sockets.contains_key(&inum) {
            match Diag::open_for(inum, &mut self.paths)? {
                Some(diag) => self.sockets.insert(inum, diag),
                None => return Ok(None),
            };
        }
        Ok(self.sockets.get_mut(&inum))
    }

    /// Answers every request; a request that cannot be answered is
    /// answered `None`, and its sockets' linger is then unknown. That
    /// includes a namespace found nowhere: it may be gone (its sockets
    /// with it) or only out of reach (held by an fd, or a mount in another
    /// mount namespace), and a lookup cannot tell which.
    pub fn poll(&mut self, requests: Vec<DiagRequest>) -> Vec<DiagAnswer> {
        let mut answers = Vec::with_capacity(requests.len());
        for request in requests {
            let found = match self.socket(request.netns) {
                Ok(Some(diag)) => ask(diag, &request).map_err(|e| e.to_string()),
                Ok(None) => Err(format!("network namespace {} not found", request.netns)),
                Err(e) => Err(e.to_string()),
            };
            let timewait = match found {
                Ok(found) => Some(found),
                Err(reason) => {
                    // The socket may be broken; open a fresh one next time.
                    self.sockets.remove(&request.netns);
                    self.failed += 1;
                    if !self.warned {
                        self.warning = Some(format!(
                            "sock_diag lookup failed ({reason}): TIME_WAIT and FIN_WAIT2 linger of affected sockets is unknown (their records say complete: false)"
                        ));
                        self.warned = true;
                    }
                    None
                }
            };
            answers.push(DiagAnswer {
                done_ns: clock::boot_ns(),
                timewait,
                request,
            });
        }
        let wanted: Vec<u32> = answers
            .iter()
            .filter(|a| a.timewait.is_some())
            .map(|a| a.request.netns)
            .collect();
        self.sockets.retain(|inum, _| wanted.contains(inum));
        answers
    }
}

/// The timewait sockets of one request by cookie. Orphans are looked up
/// one by one (by 4-tuple and cookie): a dump, even one filtered to
/// FIN_WAIT2, walks the whole socket table, which holds every TIME_WAIT
/// socket of a busy host. Only followed TIME_WAIT sockets need that walk,
/// and they are asked about far less often.
fn ask(diag: &mut Diag, request: &DiagRequest) -> Result<Sightings, DiagError> {
    let mut found = Sightings::default();
    if !request.fin_wait2.is_empty() {
        sock_diag::add_timewait(
            &diag.lookup(request.family, &request.fin_wait2, false)?,
            &mut found,
        );
    }
    if !request.time_wait.is_empty() {
        let states = sock_diag::states(&[TcpState::TimeWait]);
        sock_diag::add_timewait(&diag.dump(request.family, states, false)?, &mut found);
    }
    Ok(found)
}
