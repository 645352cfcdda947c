//! Pure logic, no I/O: the kernel's step logs unfolded into events (fold), connection lifecycles from events (tracker), statistics per group over time (aggregate, dist), the findings (diagnose), what the daemon's history keeps of them (history), closes over time for pictures (timeline), and what the user selected (select).

pub mod aggregate;
pub mod diagnose;
pub mod dist;
pub mod event;
pub mod fold;
pub mod history;
pub mod human;
pub mod select;
pub mod timeline;
pub mod tracker;
