//! CPU accounting of a run: the process, the calling thread, and threads by name (from
//! /proc on Linux).

/// CPU seconds used so far by the calling thread.
pub(super) fn thread_cpu_now() -> f64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// User + system CPU seconds of this process.
pub(super) fn process_cpu_seconds() -> f64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// CPU seconds of this process's reactor threads, from /proc (Linux only; 0 elsewhere).
pub(super) fn reactor_cpu_seconds() -> f64 {
    thread_cpu_seconds("floodgate-react")
}

/// CPU seconds of this process's threads whose name starts with `prefix` (Linux only).
pub(super) fn thread_cpu_seconds(prefix: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let hz = rustix::param::clock_ticks_per_second().max(1) as f64;
    let mut total = 0.0;
    for task in dir.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3; utime 14, stime 15.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        total += (ticks(11) + ticks(12)) / hz;
    }
    total
}
