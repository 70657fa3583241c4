//! Geo predicates end to end: points as lat/lon fields and as GeoJSON, boxes
//! (also across the antimeridian), radii and distance ordering, answered through
//! the leaves' range indexes and checked against a direct computation here.

use altdb_tests::data::Rng;
use altdb_tests::{Cluster, ClusterOptions};
use serde_json::{json, Value};

const DOCS: u64 = 20_000;
/// Cities the points cluster around (lat, lon); the rest are spread over the globe.
const CENTERS: &[(f64, f64)] = &[
    (59.91, 10.75),
    (48.86, 2.35),
    (-33.87, 151.21),
    (-17.7, 179.9),
];

/// Haversine distance in meters, written out independently of altdb's.
fn distance_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let r = 6_371_008.8_f64;
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let h = ((p2 - p1) / 2.0).sin().powi(2)
        + p1.cos() * p2.cos() * ((lon2 - lon1).to_radians() / 2.0).sin().powi(2);
    2.0 * r * h.sqrt().asin()
}

fn points() -> Vec<(u64, f64, f64)> {
    let mut rng = Rng::new(4242);
    (0..DOCS)
        .map(|id| {
            let (lat, lon) = if rng.below(4) == 0 {
                (rng.unit() * 180.0 - 90.0, rng.unit() * 360.0 - 180.0)
            } else {
                let (clat, clon) = CENTERS[rng.below(CENTERS.len() as u64) as usize];
                let mut lon = clon + (rng.unit() - 0.5) * 1.0;
                if lon > 180.0 {
                    lon -= 360.0;
                }
                (clat + (rng.unit() - 0.5) * 1.0, lon)
            };
            // Round to 6 decimals as a device would send them.
            let round = |v: f64| (v * 1e6).round() / 1e6;
            (id, round(lat), round(lon))
        })
        .collect()
}

#[test]
fn geo_filters_use_the_index_and_match_a_direct_computation() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        leaves: 2,
        seal_rows: 3_000,
        ..ClusterOptions::default()
    })?;
    cluster.create_collection(json!({"name": "places", "num_shards": 4, "id_field": "id"}))?;
    let points = points();
    // Even ids carry a lat/lon object, odd ids a GeoJSON point; both read the same.
    let docs: Vec<Value> = points
        .iter()
        .map(|&(id, lat, lon)| {
            if id % 2 == 0 {
                json!({"id": id, "pos": {"lat": lat, "lon": lon}, "kind": "pair"})
            } else {
                json!({"id": id, "pos": {"type": "Point", "coordinates": [lon, lat]}, "kind": "geojson"})
            }
        })
        .collect();
    cluster.write_docs("places", &docs, 2_000)?;
    cluster.wait_until(
        "SELECT COUNT(*) FROM places WHERE \"pos.lat\" IS NOT NULL",
        std::time::Duration::from_secs(20),
        |n| n == DOCS as i64,
    );
    std::thread::sleep(std::time::Duration::from_secs(2));

    let ids = |sql: &str| -> anyhow::Result<Vec<u64>> {
        let mut ids: Vec<u64> = cluster
            .rows(sql)?
            .iter()
            .map(|r| r[0].as_u64().unwrap_or(u64::MAX))
            .collect();
        ids.sort_unstable();
        Ok(ids)
    };
    let expect = |keep: &dyn Fn(f64, f64) -> bool| -> Vec<u64> {
        points
            .iter()
            .filter(|&&(_, lat, lon)| keep(lat, lon))
            .map(|&(id, _, _)| id)
            .collect()
    };

    // A box around Oslo.
    let in_box = ids("SELECT id FROM places WHERE geo_within_box(\"pos.lat\", \"pos.lon\", 59.8, 10.5, 60.0, 11.0)")?;
    let expected = expect(&|lat, lon| (59.8..=60.0).contains(&lat) && (10.5..=11.0).contains(&lon));
    assert!(expected.len() > 100, "{}", expected.len());
    assert!(
        expected.iter().any(|id| id % 2 == 1),
        "GeoJSON points among them"
    );
    assert_eq!(in_box, expected);

    // A box across the antimeridian (Fiji).
    let crossing = ids("SELECT id FROM places WHERE geo_within_box(\"pos.lat\", \"pos.lon\", -18.0, 179.8, -17.5, -179.9)")?;
    let expected =
        expect(&|lat, lon| (-18.0..=-17.5).contains(&lat) && (lon >= 179.8 || lon <= -179.9));
    assert!(!expected.is_empty());
    assert_eq!(crossing, expected);

    // A radius, and the same as a distance bound.
    let expected = expect(&|lat, lon| distance_m(lat, lon, 48.86, 2.35) <= 15_000.0);
    assert!(expected.len() > 100, "{}", expected.len());
    assert_eq!(
        ids("SELECT id FROM places WHERE geo_within_radius(\"pos.lat\", \"pos.lon\", 48.86, 2.35, 15000)")?,
        expected
    );
    assert_eq!(
        ids("SELECT id FROM places WHERE geo_distance(\"pos.lat\", \"pos.lon\", 48.86, 2.35) < 15000 AND kind IN ('pair', 'geojson')")?,
        expect(&|lat, lon| distance_m(lat, lon, 48.86, 2.35) < 15_000.0)
    );

    // Nearest 5 to a point, with distances.
    let nearest = cluster.rows(
        "SELECT id, geo_distance(\"pos.lat\", \"pos.lon\", -33.87, 151.21) AS d FROM places \
         WHERE geo_within_radius(\"pos.lat\", \"pos.lon\", -33.87, 151.21, 50000) ORDER BY d, id LIMIT 5",
    )?;
    let mut by_distance: Vec<(f64, u64)> = points
        .iter()
        .map(|&(id, lat, lon)| (distance_m(lat, lon, -33.87, 151.21), id))
        .collect();
    by_distance.sort_by(|a, b| a.partial_cmp(b).unwrap());
    for (row, (d, id)) in nearest.iter().zip(&by_distance) {
        assert_eq!(row[0].as_u64(), Some(*id), "{nearest:?}");
        assert!((row[1].as_f64().unwrap() - d).abs() < 1e-3, "{nearest:?}");
    }
    assert_eq!(nearest.len(), 5);

    // Selective geo filters read sealed segments through the index.
    let answer = cluster.query(
        "SELECT COUNT(*) FROM places WHERE geo_within_radius(\"pos.lat\", \"pos.lon\", 59.91, 10.75, 3000)",
    )?;
    let scan = &answer.body["stats"]["scan"];
    assert!(scan["segments_indexed"].as_u64() >= Some(4), "{scan}");
    assert_eq!(scan["segments_scanned"], 0, "{scan}");

    // Bad arguments say what to fix.
    let answer = cluster.query("SELECT COUNT(*) FROM places WHERE geo_within_radius(\"pos.lat\", \"pos.lon\", 95, 10, 1000)")?;
    assert_eq!(answer.status, 400, "{}", answer.body);
    let message = answer.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("latitude 95 is outside -90..90"),
        "{message}"
    );
    let answer = cluster.query("SELECT COUNT(*) FROM places WHERE geo_within_box(\"pos.lat\", \"pos.lon\", 60, 10, 59, 11)")?;
    assert_eq!(answer.status, 400, "{}", answer.body);
    Ok(())
}
