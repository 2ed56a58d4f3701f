use super::*;

fn limits() -> ServerConfig {
    ServerConfig {
        max_connections: 4,
        header_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(30),
        write_timeout: Duration::from_secs(30),
    }
}

/// Polls `watch` until it resolves, with paused time; returns the cut and when.
async fn cut_after(activity: &Activity) -> (Cut, Duration) {
    let start = Instant::now();
    let cut = Watchdog::new(activity, limits()).await;
    (cut, start.elapsed())
}

#[tokio::test(start_paused = true)]
async fn a_new_connection_owes_its_headers_within_the_header_timeout() {
    let activity = Activity::new();
    let (cut, after) = cut_after(&activity).await;
    assert!(matches!(cut, Cut::Header), "{cut:?}");
    assert_eq!(after, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_gets_the_idle_timeout_then_the_header_timeout() {
    let activity = Arc::new(Activity::new());
    drop(activity.begin());
    let (cut, after) = cut_after(&activity).await;
    assert!(matches!(cut, Cut::Idle), "{cut:?}");
    assert_eq!(after, Duration::from_secs(10));

    drop(activity.begin());
    tokio::time::advance(Duration::from_secs(5)).await;
    activity.bytes_read();
    let (cut, after) = cut_after(&activity).await;
    assert!(matches!(cut, Cut::Header), "{cut:?}");
    assert_eq!(after, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_request_in_flight_is_never_cut_and_the_idle_clock_starts_when_it_ends() {
    let activity = Arc::new(Activity::new());
    let in_flight = activity.begin();
    let watch = tokio::time::timeout(
        Duration::from_secs(3600),
        Watchdog::new(&activity, limits()),
    );
    assert!(watch.await.is_err(), "cut while a request was in flight");
    let ended = Instant::now();
    drop(in_flight);
    let cut = Watchdog::new(&activity, limits()).await;
    assert!(matches!(cut, Cut::Idle), "{cut:?}");
    assert_eq!(ended.elapsed(), Duration::from_secs(10));
}

/// One watchdog for the connection's life, as `serve` keeps it: changes made
/// between its polls (by the connection's poll, in the same task) move its
/// deadline without any wake-up.
#[tokio::test(start_paused = true)]
async fn one_watchdog_follows_requests_starting_and_ending_between_its_polls() {
    let activity = Arc::new(Activity::new());
    drop(activity.begin());
    let start = Instant::now();
    let mut watchdog = pin!(Watchdog::new(&activity, limits()));
    // Armed on the idle deadline (10 s)...
    let early = tokio::time::timeout(Duration::from_secs(3), watchdog.as_mut()).await;
    assert!(early.is_err(), "cut before any deadline");
    // ...a request's first bytes bring it forward to 3 s + the header timeout.
    activity.bytes_read();
    let cut = watchdog.as_mut().await;
    assert!(matches!(cut, Cut::Header), "{cut:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(5));

    // In flight: never cut; once it ends, the idle clock runs from then.
    let activity = Arc::new(Activity::new());
    let in_flight = activity.begin();
    let mut watchdog = pin!(Watchdog::new(&activity, limits()));
    let waited = tokio::time::timeout(Duration::from_secs(3600), watchdog.as_mut()).await;
    assert!(waited.is_err(), "cut while a request was in flight");
    let ended = Instant::now();
    drop(in_flight);
    let cut = watchdog.as_mut().await;
    assert!(matches!(cut, Cut::Idle), "{cut:?}");
    assert_eq!(ended.elapsed(), Duration::from_secs(10));
}

#[test]
fn accept_failures_back_off_doubling_up_to_a_second_and_peer_aborts_do_not() {
    let mut failures = Failures::default();
    let aborted = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
    assert_eq!(failures.failed(&aborted), None);
    let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
    let pauses: Vec<_> = (0..9).filter_map(|_| failures.failed(&emfile)).collect();
    assert_eq!(pauses[0], MIN_BACKOFF);
    assert_eq!(pauses[1], MIN_BACKOFF * 2);
    assert_eq!(*pauses.last().unwrap(), MAX_BACKOFF);
    assert_eq!(failures.count, 9);
    failures.recovered();
    assert_eq!(failures.failed(&emfile), Some(MIN_BACKOFF));
}

#[tokio::test(start_paused = true)]
async fn bytes_still_being_written_keep_an_idle_connection_open() {
    let activity = Arc::new(Activity::new());
    drop(activity.begin());
    let idle_from = Instant::now();
    tokio::time::advance(Duration::from_secs(8)).await;
    activity.bytes_written();
    let cut = Watchdog::new(&activity, limits()).await;
    assert!(matches!(cut, Cut::Idle), "{cut:?}");
    assert_eq!(idle_from.elapsed(), Duration::from_secs(18));
}

#[test]
fn the_connection_cap_stays_below_the_open_file_limit_minus_a_reserve() {
    use descriptors::{connection_cap, reserve};
    // A tenth of the limit, at least 128, at most half.
    assert_eq!(reserve(1_048_576), 104_857);
    assert_eq!(reserve(1024), 128);
    assert_eq!(reserve(64), 32);
    assert_eq!(reserve(1), 0);
    // The default cap fits a raised limit; a common soft limit clamps it.
    assert_eq!(connection_cap(16_384, 1_048_576), 16_384);
    assert_eq!(connection_cap(16_384, 1024), 896);
    assert_eq!(connection_cap(24, 64), 24);
    assert_eq!(connection_cap(50, 64), 32);
    // Never 0, whatever the limit.
    assert_eq!(connection_cap(16_384, 0), 1);
    assert_eq!(connection_cap(16_384, 1), 1);
}
