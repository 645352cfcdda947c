//! Privileged end-to-end tests: the real programs loaded into this kernel, real TCP between two network namespaces. Run as root; they fail, never skip, without it.

#[path = "privileged/analysis.rs"]
mod analysis;
#[path = "privileged/daemon.rs"]
mod daemon;
#[path = "privileged/lifecycle.rs"]
mod lifecycle;
#[path = "privileged/real.rs"]
mod real;
#[path = "privileged/safety.rs"]
mod safety;
mod support;
#[path = "privileged/transitions.rs"]
mod transitions;

use libtest_mimic::{Arguments, Trial};

/// Each test is a plain fn that panics on failure, named after itself.
macro_rules! trials {
    ($($test:ident),* $(,)?) => {
        vec![$(Trial::test(stringify!($test), || {
            $test();
            Ok(())
        })),*]
    };
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("__peer") {
        support::peer::run(&argv[2..]);
    }
    if argv.get(1).map(String::as_str) == Some("__hold") {
        support::peer::hold(&argv[2..]);
    }
    let mut args = Arguments::from_args();
    // One tracer at a time: each sees every namespace, and two cores are
    // better spent on one scenario than on contention.
    args.test_threads = Some(1);
    use analysis::*;
    use daemon::*;
    use lifecycle::*;
    use real::*;
    use safety::*;
    use transitions::*;
    let trials = trials![
        client_closes_first,
        server_closes_first,
        softirq_close_wait_is_attributed_to_server,
        port_filter_drops_other_ports_in_kernel,
        pid_filter_drops_other_processes_in_kernel,
        ipv6_connection_has_correct_addresses,
        full_ring_drops_are_counted,
        sigterm_ends_the_run_cleanly,
        duration_ends_a_transitions_run_with_its_summary,
        lifecycle_client_timeout_with_stuck_server,
        lifecycle_server_closes_first,
        lifecycle_half_close_then_peer_fin,
        lifecycle_abortive_close,
        lifecycle_simultaneous_close,
        lifecycle_peer_never_closes,
        lifecycle_preexisting_connection,
        lifecycle_client_timeout_ipv6,
        lifecycle_burst_of_2000,
        report_client_timeout_stuck_server,
        report_server_closes,
        report_no_reuse,
        report_leaked_idle,
        report_unanswered_requests,
        report_idle_closes_at_a_fixed_age_are_no_deadline,
        report_close_wait_leak,
        sockets_shows_what_lingers_now,
        top_in_a_pty_draws_updates_and_quits,
        top_refuses_without_a_terminal,
        daemon_metrics_match_traffic_and_prometheus_scrapes_them,
        daemon_survives_abuse,
        daemon_sigterm_under_load_exits_fast_and_detaches,
        daemon_bounds_endpoint_series,
        daemon_config_file_is_checked,
        daemon_labels_containers_and_filters_by_cgroup,
        flood_with_a_tiny_ring_counts_drops_and_keeps_verdicts_right,
        flood_drops_show_in_report_and_metrics,
        socket_cap_evicts_and_bounds_memory,
        sigkill_leaves_nothing_behind_and_a_restart_classifies_open_connections,
        daemon_keeps_only_the_capabilities_it_needs,
        metrics_refuse_non_loopback_without_the_explicit_flag,
        a_missing_optional_hook_degrades_with_a_warning,
        bad_input_exits_2_with_one_line_naming_the_flag,
        environment_problems_exit_1_with_the_fix,
        a_closed_pipe_ends_watch_cleanly,
        a_full_disk_on_output_stops_cleanly,
        comm_and_remote_select_connections,
        real_nginx_keepalive_off_with_curl,
        real_nginx_idle_timeout_is_healthy,
        real_go_transport_per_request_leaks_idle_connections,
        real_go_client_timeout_against_a_stuck_handler,
        real_go_handler_forcing_connection_close,
        real_go_deadline_on_pooled_connections,
        real_go_pool_filled_by_unanswered_requests,
        real_go_disable_keepalives,
        real_go_keepalive_is_healthy,
        real_python_http_server_with_curl,
        real_python_prefork_close_wait_leak,
        real_python_threaded_client_is_named_by_its_process,
        real_connections_older_than_the_tracer_prove_no_deadline,
        real_daemon_reports_a_late_leak_among_many_programs,
    ];
    libtest_mimic::run(&args, trials).exit();
}
