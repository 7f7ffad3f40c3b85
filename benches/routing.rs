//! Route matching (normalize + first matching rule) with 10, 100 and 1,000
//! rules, for a path matching the last rule and for one matching none.
//!
//! cargo bench --bench routing

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::Method;
use tollgate::route::{normalize_path, PathPattern, RouteConditions, RouteTable};

fn table(rules: usize) -> RouteTable {
    let routes = (0..rules)
        .map(|i| {
            let pattern = match i % 3 {
                0 => format!("/api/v{i}/items/*"),
                1 => format!("/svc{i}/**"),
                _ => format!("/static/{i}/*.js"),
            };
            (
                PathPattern::new(&pattern).unwrap_or_else(|_| unreachable!()),
                RouteConditions::default(),
            )
        })
        .collect();
    RouteTable::new(routes).unwrap_or_else(|_| unreachable!())
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    for rules in [10usize, 100, 1_000] {
        let t = table(rules);
        let last = rules - 1;
        let hit = match last % 3 {
            0 => format!("/api/v{last}/items/42"),
            1 => format!("/svc{last}/a/b/c"),
            _ => format!("/static/{last}/app.js"),
        };
        group.bench_function(BenchmarkId::new("last_rule", rules), |b| {
            b.iter(|| {
                let path = normalize_path(black_box(hit.as_bytes())).unwrap_or_default();
                black_box(t.find(&path, &Method::GET, None))
            })
        });
        group.bench_function(BenchmarkId::new("no_rule", rules), |b| {
            b.iter(|| {
                let path = normalize_path(black_box(b"/nothing/here/at/all")).unwrap_or_default();
                black_box(t.find(&path, &Method::GET, None))
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = routing
}
criterion_main!(benches);
