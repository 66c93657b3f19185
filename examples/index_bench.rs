//! Recording-index benchmark: upserts per second into the manager's database, SQLite (the
//! embedded default) and a real PostgreSQL started for the run, the way index events store
//! them (`verge_manager::db::Db::upsert`, one statement per row).
//!
//! ```text
//! cargo run --release --example index_bench -- [--rows 5000] [--tasks 8]
//! ```
//!
//! For each backend: new rows one at a time; the same rows again (what an agent's resend
//! costs: the upsert finds them and changes nothing); new rows from `--tasks` concurrent
//! writers (many agents at once).

use std::sync::Arc;
use std::time::{Duration, Instant};

use verge_manager::db::Db;
use verge_manager::db::recordings::Upserted;
use verge_protocol::index::IndexRow;
use verge_testkit::TempDir;
use verge_testkit::measure::numeric_flags;
use verge_testkit::postgres::Postgres;

fn row(i: usize, offset: usize) -> IndexRow {
    let i = i + offset;
    let stream = format!("live/cam{}", i % 100);
    let (month, day) = ((i / 100) % 12 + 1, (i / 1200) % 28 + 1);
    IndexRow {
        id: format!("r{i}"),
        mpd_path: format!("{stream}/2026/{month:02}/{day:02}/manifest.mpd"),
        stream,
        year: 2026,
        month: month as u32,
        day: day as u32,
    }
}

async fn measure(db: Arc<Db>, rows: usize, tasks: usize) -> (f64, f64, f64) {
    db.migrate().await.expect("migrations");
    let started = Instant::now();
    for i in 0..rows {
        assert_eq!(
            db.upsert(&row(i, 0), "edge-1").await.unwrap(),
            Upserted::Stored
        );
    }
    let new = rows as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for i in 0..rows {
        db.upsert(&row(i, 0), "edge-1").await.unwrap();
    }
    let again = rows as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let per_task = rows / tasks.max(1);
    let writers: Vec<_> = (0..tasks.max(1))
        .map(|t| {
            let db = db.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    db.upsert(&row(i, rows + t * per_task), &format!("edge-{t}"))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let concurrent = (per_task * tasks.max(1)) as f64 / started.elapsed().as_secs_f64();
    (new, again, concurrent)
}

fn main() {
    let [rows, tasks] = numeric_flags("index_bench", [("--rows", 5000), ("--tasks", 8)]);
    let (rows, tasks) = (rows as usize, tasks as usize);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The pools start their maintenance tasks on the runtime.
    let _runtime = rt.enter();
    let dir = TempDir::new("index-bench");
    let timeout = Duration::from_secs(30);
    let sqlite = Db::open(
        &format!("sqlite://{}/bench.db?mode=rwc", dir.path().display()),
        10,
        timeout,
    )
    .unwrap();
    let mut results = vec![(
        "SQLite (a file, sqlx defaults)",
        rt.block_on(measure(Arc::new(sqlite), rows, tasks)),
    )];
    let pg = Postgres::start(dir.path());
    let postgres = Db::open(&pg.url, 10, timeout).unwrap();
    results.push((
        "PostgreSQL 15 (loopback, fsync off)",
        rt.block_on(measure(Arc::new(postgres), rows, tasks)),
    ));

    println!("\n{rows} rows; {tasks} concurrent writers in the last column\n");
    println!("| database | new rows/s | resent rows/s | new rows/s, {tasks} writers |");
    println!("|---|---|---|---|");
    for (name, (new, again, concurrent)) in results {
        println!("| {name} | {new:.0} | {again:.0} | {concurrent:.0} |");
    }
}
