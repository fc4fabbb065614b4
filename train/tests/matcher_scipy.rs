//! The matcher against scipy's `linear_sum_assignment` on the committed cases: the same minimal
//! total cost (assignments may differ only where several are optimal).

use std::time::Instant;

use zoo_train::matcher::hungarian_match;

#[test]
fn same_minimal_cost_as_scipy() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/matcher_scipy.json");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for case in json["cases"].as_array().unwrap() {
        let (q, t) = (case["queries"].as_u64().unwrap() as usize, case["targets"].as_u64().unwrap() as usize);
        let cost: Vec<f32> = case["cost"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let start = Instant::now();
        let pairs = hungarian_match(&cost, q, t).unwrap();
        let elapsed = start.elapsed();
        let total: f64 = pairs.iter().map(|&(qi, ti)| cost[qi * t + ti] as f64).sum();
        let scipy = case["scipy_total"].as_f64().unwrap();
        println!("{q}x{t}: total {total:.6} (scipy {scipy:.6}), matched in {:.3} ms", elapsed.as_secs_f64() * 1e3);
        assert!((total - scipy).abs() < 1e-3, "{q}x{t}: total {total} vs scipy {scipy}");
        let scipy_pairs: Vec<(usize, usize)> = case["scipy_pairs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_u64().unwrap() as usize, p[1].as_u64().unwrap() as usize))
            .collect();
        if case["unique_optimum"].as_bool().unwrap() {
            assert_eq!(pairs, scipy_pairs, "{q}x{t}: the single optimum must be found exactly");
        }
    }
}
