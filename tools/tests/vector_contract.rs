//! Contract tests for the vector index: one suite, run against the embedded engine always and against a Qdrant
//! server when `QDRANT_URL` is set. Every result is checked against a brute-force evaluation of the same data.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; that is its job

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use audience_tools::vector::edge::EdgeIndex;
use audience_tools::vector::server::ServerIndex;
use audience_tools::vector::{
    Condition, EdgeReader, EdgeStore, Filter, Manifest, MatchValue, ScoredPoint, StagingStart, TEXT_HASH_FIELD,
    VectorIndex, VectorPoint, VectorSearch,
};
use serde_json::{Map, Value, json};

const DIM: usize = 384;
const COUNTRIES: &[&str] = &["PL", "DE", "FR", "US"];
/// One value contains a space: the server client would turn it into a full-text match if converted carelessly.
const SEGMENTS: &[&str] = &["vip", "regular", "high value"];
const INTERESTS: &[&str] = &["socks", "watches", "shoes", "bags"];

/// splitmix64: deterministic pseudo-random numbers without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn normalised(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

fn random_vector(rng: &mut Rng) -> Vec<f32> {
    normalised((0..DIM).map(|_| rng.unit()).collect())
}

fn payload(id: u64, rng: &mut Rng) -> Map<String, Value> {
    let interests: Vec<&str> = INTERESTS.iter().copied().filter(|_| rng.below(2) == 0).collect();
    let value = json!({
        "customer_id": id,
        "country": COUNTRIES[rng.below(COUNTRIES.len() as u64) as usize],
        "segment": SEGMENTS[rng.below(SEGMENTS.len() as u64) as usize],
        "likes_luxury": rng.below(3) == 0,
        "churned": rng.below(4) == 0,
        // Halves, so that a bound equal to a stored value tells gt from gte.
        "total_spent": rng.below(2_000) as f64 / 2.0,
        "age": 18 + rng.below(10),
        "calculated_interests": interests,
        TEXT_HASH_FIELD: format!("hash-{id}-{}", rng.below(1_000_000)),
    });
    match value {
        Value::Object(map) => map,
        other => panic!("payload is not an object: {other}"),
    }
}

/// `n` deterministic points with ids 1..=n.
fn dataset(n: u64, seed: u64) -> Vec<VectorPoint> {
    let mut rng = Rng(seed);
    (1..=n).map(|id| VectorPoint { id, vector: random_vector(&mut rng), payload: payload(id, &mut rng) }).collect()
}

fn query_vector(seed: u64) -> Vec<f32> {
    random_vector(&mut Rng(seed))
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

// ---- brute-force filter evaluation, with Qdrant's semantics ----

fn value_matches(stored: &Value, wanted: &MatchValue) -> bool {
    match (stored, wanted) {
        (Value::Array(items), _) => items.iter().any(|item| value_matches(item, wanted)),
        (Value::Bool(a), MatchValue::Bool(b)) => a == b,
        (Value::Number(a), MatchValue::Integer(b)) => a.as_i64() == Some(*b),
        (Value::String(a), MatchValue::Keyword(b)) => a == b,
        _ => false,
    }
}

fn in_range(stored: &Value, bounds: [Option<f64>; 4]) -> bool {
    let [gt, gte, lt, lte] = bounds;
    match stored {
        Value::Array(items) => items.iter().any(|item| in_range(item, bounds)),
        Value::Number(n) => n.as_f64().is_some_and(|x| {
            gt.is_none_or(|b| x > b)
                && gte.is_none_or(|b| x >= b)
                && lt.is_none_or(|b| x < b)
                && lte.is_none_or(|b| x <= b)
        }),
        _ => false,
    }
}

fn condition_holds(point: &VectorPoint, condition: &Condition) -> bool {
    match condition {
        Condition::Match { key, value } => point.payload.get(key).is_some_and(|v| value_matches(v, value)),
        Condition::MatchAny { key, values } => {
            point.payload.get(key).is_some_and(|v| values.iter().any(|value| value_matches(v, value)))
        }
        Condition::Range { key, gt, gte, lt, lte } => {
            point.payload.get(key).is_some_and(|v| in_range(v, [*gt, *gte, *lt, *lte]))
        }
        Condition::HasId { ids } => ids.contains(&point.id),
        Condition::Nested { filter } => filter_holds(point, filter),
    }
}

fn filter_holds(point: &VectorPoint, filter: &Filter) -> bool {
    filter.must.iter().all(|c| condition_holds(point, c))
        && (filter.should.is_empty() || filter.should.iter().any(|c| condition_holds(point, c)))
        && !filter.must_not.iter().any(|c| condition_holds(point, c))
}

/// Expected hits: every passing point, best cosine first.
fn brute_force(points: &[VectorPoint], query: &[f32], filter: Option<&Filter>) -> Vec<(u64, f32)> {
    let mut hits: Vec<(u64, f32)> = points
        .iter()
        .filter(|p| filter.is_none_or(|f| filter_holds(p, f)))
        .map(|p| (p.id, dot(&p.vector, query)))
        .collect();
    hits.sort_by(|a, b| b.1.total_cmp(&a.1));
    hits
}

/// Checks `got` against the best `got.len()` of `expected`. Each rank's score must match, and each returned id must
/// have that score itself, so near-ties may swap places but a wrong point cannot slip in.
fn assert_ranked(got: &[ScoredPoint], expected: &[(u64, f32)], limit: usize, points: &[VectorPoint], query: &[f32]) {
    assert_eq!(got.len(), expected.len().min(limit), "number of hits");
    let by_id: HashMap<u64, &VectorPoint> = points.iter().map(|p| (p.id, p)).collect();
    for (rank, (hit, (_, want_score))) in got.iter().zip(expected).enumerate() {
        assert!((hit.score - want_score).abs() < 1e-4, "rank {rank}: score {} != {want_score}", hit.score);
        let own = dot(&by_id[&hit.id].vector, query);
        assert!((hit.score - own).abs() < 1e-4, "rank {rank}: id {} has score {own}, got {}", hit.id, hit.score);
        assert_eq!(hit.payload, by_id[&hit.id].payload, "payload of hit {}", hit.id);
    }
    let got_ids: BTreeSet<u64> = got.iter().map(|h| h.id).collect();
    assert_eq!(got_ids.len(), got.len(), "duplicate ids in hits");
}

fn keyword(key: &str, value: &str) -> Condition {
    Condition::Match { key: key.into(), value: MatchValue::Keyword(value.into()) }
}

fn boolean(key: &str, value: bool) -> Condition {
    Condition::Match { key: key.into(), value: MatchValue::Bool(value) }
}

fn range(key: &str, gt: Option<f64>, gte: Option<f64>, lt: Option<f64>, lte: Option<f64>) -> Condition {
    Condition::Range { key: key.into(), gt, gte, lt, lte }
}

async fn loaded(index: &Arc<dyn VectorIndex>, n: u64, seed: u64) -> Vec<VectorPoint> {
    let points = dataset(n, seed);
    index.ensure_collection().await.unwrap();
    index.upsert(points.clone()).await.unwrap();
    points
}

// ---- the contract ----

async fn ensure_collection_is_idempotent(index: Arc<dyn VectorIndex>) {
    index.ensure_collection().await.unwrap();
    index.ensure_collection().await.unwrap();
    assert_eq!(index.count(None).await.unwrap(), 0);
    let points = dataset(5, 1);
    index.upsert(points).await.unwrap();
    index.ensure_collection().await.unwrap();
    assert_eq!(index.count(None).await.unwrap(), 5, "ensure_collection must keep existing points");
}

async fn search_matches_brute_force(index: Arc<dyn VectorIndex>) {
    let points = loaded(&index, 300, 2).await;
    assert_eq!(index.count(None).await.unwrap(), 300);
    for seed in [100, 101, 102] {
        let query = query_vector(seed);
        let expected = brute_force(&points, &query, None);
        assert!(index.search(query.clone(), None, 0).await.unwrap().is_empty());
        for limit in [1, 10, 50] {
            let got = index.search(query.clone(), None, limit).await.unwrap();
            assert_ranked(&got, &expected, limit, &points, &query);
        }
        // A stored vector is its own nearest neighbour with cosine 1.
        let own = index.search(points[7].vector.clone(), None, 1).await.unwrap();
        assert_eq!(own[0].id, points[7].id);
        assert!((own[0].score - 1.0).abs() < 1e-4);
    }
    // An empty filter behaves as no filter.
    let query = query_vector(103);
    let got = index.search(query.clone(), Some(Filter::default()), 10).await.unwrap();
    assert_ranked(&got, &brute_force(&points, &query, None), 10, &points, &query);
}

/// Regression (issue 22, item 19): customers with the same profile text have the same vector, and each engine cut
/// such a tie at the limit in its own order. Equal scores now come back by ascending id, and the limit keeps the
/// lowest ids of a tie that straddles it, in both engines.
async fn equal_scores_come_back_by_id(index: Arc<dyn VectorIndex>) {
    let mut rng = Rng(11);
    let texts: Vec<Vec<f32>> = (0..3).map(|_| random_vector(&mut rng)).collect();
    // Written highest id first, so an engine's own order (insertion, internal offset) is not the id order.
    let points: Vec<VectorPoint> = (1..=90u64)
        .rev()
        .map(|id| VectorPoint { id, vector: texts[(id % 3) as usize].clone(), payload: payload(id, &mut rng) })
        .collect();
    index.ensure_collection().await.unwrap();
    index.upsert(points.clone()).await.unwrap();
    let query = texts[1].clone();
    let mut expected: Vec<(u64, f32)> = points.iter().map(|p| (p.id, dot(&p.vector, &query))).collect();
    expected.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let by_id: HashMap<u64, &VectorPoint> = points.iter().map(|p| (p.id, p)).collect();
    for limit in [1, 7, 30, 31, 45, 90, 200] {
        let got = index.search(query.clone(), None, limit).await.unwrap();
        let ids: Vec<u64> = got.iter().map(|hit| hit.id).collect();
        let want: Vec<u64> = expected.iter().take(limit).map(|(id, _)| *id).collect();
        assert_eq!(ids, want, "limit {limit}");
        for hit in &got {
            assert_eq!(hit.payload, by_id[&hit.id].payload, "payload of hit {}", hit.id);
        }
    }
    // Within a filter as well: the members of an audience tie the same way.
    let odd = Filter::must([Condition::HasId { ids: (1..=90).filter(|id| id % 2 == 1).collect() }]);
    let got: Vec<u64> = index.search(query.clone(), Some(odd), 5).await.unwrap().iter().map(|hit| hit.id).collect();
    let want: Vec<u64> = expected.iter().map(|(id, _)| *id).filter(|id| id % 2 == 1).take(5).collect();
    assert_eq!(got, want);
}

async fn filters_match_brute_force(index: Arc<dyn VectorIndex>) {
    let points = loaded(&index, 300, 3).await;
    // The median stored amount: a bound that splits the data and equals a stored value (tells gt from gte).
    let mut spent: Vec<f64> = points.iter().map(|p| p.payload["total_spent"].as_f64().unwrap()).collect();
    spent.sort_by(f64::total_cmp);
    let pivot = spent[spent.len() / 2];
    let age = points[0].payload["age"].as_i64().unwrap();
    let some_ids = vec![3, 17, 42, 99, 250, 10_000];
    let filters: Vec<(&str, Filter)> = vec![
        ("keyword", Filter::must([keyword("country", "PL")])),
        ("keyword with a space", Filter::must([keyword("segment", "high value")])),
        ("bool", Filter::must([boolean("likes_luxury", true)])),
        ("integer", Filter::must([Condition::Match { key: "age".into(), value: MatchValue::Integer(age) }])),
        (
            "match any keywords",
            Filter::must([Condition::MatchAny {
                key: "country".into(),
                values: vec![MatchValue::Keyword("PL".into()), MatchValue::Keyword("DE".into())],
            }]),
        ),
        (
            "match any integers",
            Filter::must([Condition::MatchAny {
                key: "customer_id".into(),
                values: some_ids.iter().map(|&id| MatchValue::Integer(id as i64)).collect(),
            }]),
        ),
        (
            "match any bools",
            Filter::must([Condition::MatchAny { key: "churned".into(), values: vec![MatchValue::Bool(true)] }]),
        ),
        ("range gt", Filter::must([range("total_spent", Some(pivot), None, None, None)])),
        ("range gte", Filter::must([range("total_spent", None, Some(pivot), None, None)])),
        ("range lt", Filter::must([range("total_spent", None, None, Some(pivot), None)])),
        ("range lte", Filter::must([range("total_spent", None, None, None, Some(pivot))])),
        ("range between", Filter::must([range("total_spent", None, Some(200.0), Some(600.0), None)])),
        ("has_id", Filter::must([Condition::HasId { ids: some_ids.clone() }])),
        ("must_not", Filter { must_not: vec![boolean("churned", true)], ..Filter::default() }),
        ("should", Filter { should: vec![keyword("country", "FR"), keyword("segment", "vip")], ..Filter::default() }),
        (
            "nested (a or b) and c",
            Filter::must([
                Condition::Nested {
                    filter: Filter {
                        should: vec![keyword("country", "PL"), keyword("country", "DE")],
                        ..Filter::default()
                    },
                },
                boolean("likes_luxury", true),
            ]),
        ),
        (
            "must, should and must_not together",
            Filter {
                must: vec![range("age", None, Some(20.0), None, Some(25.0))],
                should: vec![keyword("country", "US"), boolean("likes_luxury", true)],
                must_not: vec![keyword("segment", "regular")],
            },
        ),
        ("array contains", Filter::must([keyword("calculated_interests", "watches")])),
        (
            "array contains any",
            Filter::must([Condition::MatchAny {
                key: "calculated_interests".into(),
                values: vec![MatchValue::Keyword("socks".into()), MatchValue::Keyword("bags".into())],
            }]),
        ),
        ("unknown value", Filter::must([keyword("country", "XX")])),
        ("match any of nothing", Filter::must([Condition::MatchAny { key: "country".into(), values: vec![] }])),
    ];
    let query = query_vector(200);
    for (name, filter) in &filters {
        let expected = brute_force(&points, &query, Some(filter));
        let count = index.count(Some(filter.clone())).await.unwrap();
        assert_eq!(count, expected.len() as u64, "count for filter `{name}`");
        let got = index.search(query.clone(), Some(filter.clone()), 1_000).await.unwrap();
        let got_ids: BTreeSet<u64> = got.iter().map(|h| h.id).collect();
        let want_ids: BTreeSet<u64> = expected.iter().map(|h| h.0).collect();
        assert_eq!(got_ids, want_ids, "hits for filter `{name}`");
        assert_ranked(&got, &expected, 1_000, &points, &query);
        let top = index.search(query.clone(), Some(filter.clone()), 5).await.unwrap();
        assert_ranked(&top, &expected, 5, &points, &query);
    }
    // The cases must discriminate: every filter but the two empty ones selects a proper, non-empty subset.
    let empty = ["unknown value", "match any of nothing"];
    for (name, filter) in &filters {
        let n = brute_force(&points, &query, Some(filter)).len();
        if empty.contains(name) {
            assert_eq!(n, 0, "filter `{name}` should select nothing");
        } else {
            assert!(n > 0 && n < points.len(), "filter `{name}` selects {n} of {}", points.len());
        }
    }
    let size =
        |name: &str| filters.iter().find(|(n, _)| *n == name).map(|(_, f)| brute_force(&points, &query, Some(f)).len());
    assert_ne!(size("range gt"), size("range gte"), "gt and gte must differ at a stored value");
}

async fn retrieve_by_id(index: Arc<dyn VectorIndex>) {
    let points = loaded(&index, 50, 4).await;
    let got = index.retrieve(vec![3, 999, 7], false).await.unwrap();
    let ids: BTreeSet<u64> = got.iter().map(|p| p.id).collect();
    assert_eq!(ids, BTreeSet::from([3, 7]), "missing ids are skipped");
    for stored in &got {
        assert!(stored.vector.is_none());
        assert_eq!(stored.payload, points[stored.id as usize - 1].payload);
    }
    let got = index.retrieve(vec![5], true).await.unwrap();
    assert_eq!(got.len(), 1);
    let vector = got[0].vector.as_ref().expect("vector requested");
    assert_eq!(vector.len(), DIM);
    let diff = vector.iter().zip(&points[4].vector).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-5, "stored vector differs by {diff}");
    assert!(index.retrieve(vec![], true).await.unwrap().is_empty());
    assert!(index.retrieve(vec![12_345], false).await.unwrap().is_empty());
}

async fn upsert_replaces_payload(index: Arc<dyn VectorIndex>) {
    let points = loaded(&index, 20, 5).await;
    let mut replacement = points[0].clone();
    let mut new_payload = Map::new();
    new_payload.insert("customer_id".into(), json!(1));
    new_payload.insert("country".into(), json!("ZZ"));
    new_payload.insert(TEXT_HASH_FIELD.into(), json!("changed"));
    replacement.payload = new_payload.clone();
    replacement.vector = query_vector(500);
    index.upsert(vec![replacement.clone()]).await.unwrap();
    assert_eq!(index.count(None).await.unwrap(), 20);
    let got = index.retrieve(vec![1], true).await.unwrap();
    assert_eq!(got[0].payload, new_payload, "payload is replaced, not merged");
    let hits = index.search(replacement.vector.clone(), None, 1).await.unwrap();
    assert_eq!(hits[0].id, 1, "vector is replaced");
    assert_eq!(index.count(Some(Filter::must([keyword("country", "ZZ")]))).await.unwrap(), 1);
    assert_eq!(index.text_hashes().await.unwrap()[&1], "changed");
    index.upsert(vec![]).await.unwrap();
}

async fn delete_points(index: Arc<dyn VectorIndex>) {
    let points = loaded(&index, 30, 6).await;
    index.delete(vec![2, 4, 9_999]).await.unwrap();
    index.delete(vec![]).await.unwrap();
    assert_eq!(index.count(None).await.unwrap(), 28);
    assert!(index.retrieve(vec![2, 4], false).await.unwrap().is_empty());
    let hits = index.search(points[1].vector.clone(), None, 30).await.unwrap();
    assert_eq!(hits.len(), 28);
    assert!(hits.iter().all(|h| h.id != 2 && h.id != 4));
    let hashes = index.text_hashes().await.unwrap();
    assert!(!hashes.contains_key(&2) && !hashes.contains_key(&4) && hashes.len() == 28);
}

async fn text_hashes_cover_every_point(index: Arc<dyn VectorIndex>) {
    index.ensure_collection().await.unwrap();
    assert!(index.text_hashes().await.unwrap().is_empty());
    // More points than one scroll page, so paging is exercised.
    let mut points = dataset(2_150, 7);
    // A point without a hash is left out rather than failing the scan.
    points[10].payload.remove(TEXT_HASH_FIELD);
    for chunk in points.chunks(500) {
        index.upsert(chunk.to_vec()).await.unwrap();
    }
    let hashes = index.text_hashes().await.unwrap();
    let expected: HashMap<u64, String> = points
        .iter()
        .filter_map(|p| p.payload.get(TEXT_HASH_FIELD).and_then(Value::as_str).map(|h| (p.id, h.to_string())))
        .collect();
    assert_eq!(expected.len(), 2_149);
    assert_eq!(hashes, expected);
}

/// Instantiates every contract case for both engines.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    let index = super::EdgeIndex::open(&dir.path().join("vectors")).await.unwrap();
                    assert!(super::VectorSearch::describe(&index).starts_with("embedded:"));
                    super::$case(std::sync::Arc::new(index)).await;
                }
            )*
        }

        /// Ignored unless asked for: a test that cannot run must show as ignored, not as passed.
        /// `scripts/test.sh` runs them (`--ignored`) when `QDRANT_URL` is set.
        mod server {
            $(
                #[tokio::test]
                #[ignore = "needs a Qdrant server: set QDRANT_URL and run with --ignored"]
                async fn $case() {
                    let index = super::server_index(stringify!($case)).await;
                    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
                        super::$case(index.clone()),
                    ))
                    .await;
                    index.drop_collection().await.unwrap();
                    if let Err(panic) = outcome {
                        std::panic::resume_unwind(panic);
                    }
                }
            )*
        }
    };
}

contract!(
    ensure_collection_is_idempotent,
    search_matches_brute_force,
    equal_scores_come_back_by_id,
    filters_match_brute_force,
    retrieve_by_id,
    upsert_replaces_payload,
    delete_points,
    text_hashes_cover_every_point,
);

/// A server index on a fresh collection unique to this test. Asked to run without `QDRANT_URL`, it fails.
async fn server_index(case: &str) -> Arc<ServerIndex> {
    let url = std::env::var("QDRANT_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .expect("the server contract tests need QDRANT_URL (e.g. http://127.0.0.1:6334)");
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let collection = format!("contract_{case}_{}_{nanos}", std::process::id());
    let index = ServerIndex::connect(&url, &collection).await.unwrap();
    assert_eq!(index.describe(), format!("server:{url}"));
    index.drop_collection().await.unwrap();
    Arc::new(index)
}

// ---- embedded engine only ----

#[tokio::test]
async fn embedded_data_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vectors");
    let points = dataset(100, 8);
    {
        let index: Arc<dyn VectorIndex> = Arc::new(EdgeIndex::open(&path).await.unwrap());
        index.ensure_collection().await.unwrap();
        index.upsert(points.clone()).await.unwrap();
        index.delete(vec![50]).await.unwrap();
    }
    let index: Arc<dyn VectorIndex> = Arc::new(EdgeIndex::open(&path).await.unwrap());
    index.ensure_collection().await.unwrap();
    let remaining: Vec<VectorPoint> = points.into_iter().filter(|p| p.id != 50).collect();
    assert_eq!(index.count(None).await.unwrap(), 99);
    let filter = Filter::must([keyword("country", "DE")]);
    assert_eq!(
        index.count(Some(filter.clone())).await.unwrap(),
        brute_force(&remaining, &[0.0; DIM], Some(&filter)).len() as u64
    );
    let query = query_vector(300);
    let got = index.search(query.clone(), None, 10).await.unwrap();
    assert_ranked(&got, &brute_force(&remaining, &query, None), 10, &remaining, &query);
    assert_eq!(index.text_hashes().await.unwrap().len(), 99);
}

#[tokio::test]
async fn embedded_second_open_is_refused_while_held() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vectors");
    let first = EdgeIndex::open(&path).await.unwrap();
    let err = match EdgeIndex::open(&path).await {
        Ok(_) => panic!("a second open of a held directory must fail"),
        Err(err) => err.to_string(),
    };
    assert_eq!(err, format!("vector index busy: another audience process is using {}", path.display()));
    drop(first);
    // Once released, the directory opens again.
    EdgeIndex::open(&path).await.unwrap();
}

#[tokio::test]
async fn embedded_rejects_wrong_dimension() {
    let dir = tempfile::tempdir().unwrap();
    let index = EdgeIndex::open(dir.path()).await.unwrap();
    index.ensure_collection().await.unwrap();
    let point = VectorPoint { id: 1, vector: vec![1.0; 3], payload: Map::new() };
    let err = index.upsert(vec![point]).await.unwrap_err().to_string();
    assert!(err.contains("3-d vector"), "{err}");
    assert_eq!(index.count(None).await.unwrap(), 0);
}

// ---- embedded engine: published versions shared by one writer and many readers ----

fn manifest(points: &[VectorPoint], tag: &str) -> Manifest {
    Manifest { profiles: points.len() as u64, fingerprint: format!("{tag}-{}", points.len()), data_version: None }
}

/// Regression: a second process on one data directory got "vector index busy", even for an ingest while a chat
/// was open. Readers now work on copies of published versions, so a writer and several readers run side by side,
/// a reader keeps one whole version until a newer one is published, then moves to it without reopening.
#[tokio::test]
async fn embedded_readers_and_a_writer_share_one_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = EdgeStore::new(dir.path().join("vectors").join("schema_a"));
    let first = dataset(120, 21);

    let reader = EdgeReader::new(store.clone());
    assert!(reader.current().await.unwrap().is_none(), "nothing published yet");

    let writer = store.begin(StagingStart::Empty).await.unwrap();
    let staged = writer.index().unwrap();
    staged.ensure_collection().await.unwrap();
    staged.upsert(first.clone()).await.unwrap();
    assert!(reader.current().await.unwrap().is_none(), "an unpublished version is invisible");
    writer.publish(&manifest(&first, "a")).await.unwrap();

    // Two readers at once (two chats), each on its own copy.
    let other = EdgeReader::new(store.clone());
    let held = reader.current().await.unwrap().unwrap();
    let held_by_other = other.current().await.unwrap().unwrap();
    assert_eq!(held.count(None).await.unwrap(), 120);
    assert_eq!(held_by_other.count(None).await.unwrap(), 120);
    assert_eq!(held.manifest(), &manifest(&first, "a"));

    // A writer starts from a copy of the current version while both readers hold theirs.
    let writer = store.begin(StagingStart::CopyCurrent).await.unwrap();
    let staged = writer.index().unwrap();
    assert_eq!(staged.count(None).await.unwrap(), 120, "the staging copy starts from the current version");
    let extra: Vec<VectorPoint> = dataset(150, 22).into_iter().filter(|p| p.id > 120).collect();
    staged.upsert(extra).await.unwrap();
    staged.delete((1..=10).collect()).await.unwrap();
    // Mid-write, every reader still sees the whole old version: the same copy, and a fresh reader too.
    assert_eq!(reader.current().await.unwrap().unwrap().count(None).await.unwrap(), 120);
    let fresh = EdgeReader::new(store.clone());
    assert_eq!(fresh.current().await.unwrap().unwrap().count(None).await.unwrap(), 120);
    let second: Vec<VectorPoint> = first
        .iter()
        .filter(|p| p.id > 10)
        .cloned()
        .chain(dataset(150, 22).into_iter().filter(|p| p.id > 120))
        .collect();
    writer.publish(&manifest(&second, "b")).await.unwrap();

    // After the publication the same reader moves to the new version; a handle taken before keeps answering
    // from the old one until it is dropped.
    let moved = reader.current().await.unwrap().unwrap();
    assert_eq!(moved.count(None).await.unwrap(), 140);
    assert_eq!(moved.manifest(), &manifest(&second, "b"));
    assert_ne!(moved.version(), held.version());
    assert_eq!(held.count(None).await.unwrap(), 120);
    let query = query_vector(5);
    let got = moved.search(query.clone(), None, 10).await.unwrap();
    assert_ranked(&got, &brute_force(&second, &query, None), 10, &second, &query);

    // A writer that fails (dropped unpublished) changes nothing and leaves no staging directory.
    let writer = store.begin(StagingStart::CopyCurrent).await.unwrap();
    writer.index().unwrap().delete((1..=150).collect()).await.unwrap();
    drop(writer);
    assert_eq!(reader.current().await.unwrap().unwrap().count(None).await.unwrap(), 140);

    // Once the readers let go, old versions and private copies are collected by the next writer.
    drop((held, held_by_other, moved, reader, other, fresh));
    let writer = store.begin(StagingStart::CopyCurrent).await.unwrap();
    writer.publish(&manifest(&second, "c")).await.unwrap();
    let mut left: Vec<String> = std::fs::read_dir(store.root())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "readers")
        .collect();
    left.sort();
    assert_eq!(left, ["CURRENT", "v000003", "writer.lock"], "only the current version is kept");
    assert_eq!(std::fs::read_dir(store.root().join("readers")).unwrap().count(), 0, "no reader copies are left");
}
