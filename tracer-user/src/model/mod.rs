//! Pure logic, no I/O: connection lifecycles from events (tracker), statistics per group over time (aggregate, dist), the findings (diagnose), and what the user selected (select).

pub mod aggregate;
pub mod diagnose;
pub mod dist;
pub mod event;
pub mod human;
pub mod select;
pub mod tracker;
