//! Grounding by similarity with the real MiniLM model: words the data does not spell are matched to its products
//! when they mean one ("sneakers" → shoes, "tees" → t_shirts), told apart when they are only near one ("hiking
//! gear"), and reported when they name nothing in the data ("kayaks").
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; that is its job

use audience_tools::embed::LazyEmbedder;
use audience_tools::grounding::{Grounding, value_text};
use audience_tools::paths;
use audience_tools::vocabulary::DataValues;
use chrono::NaiveDate;

async fn ground(question: &str) -> Grounding {
    let values = DataValues {
        products: [
            "socks",
            "t_shirts",
            "dresses",
            "scarves",
            "yoga_wear",
            "jeans",
            "shoes",
            "running_gear",
            "watches",
            "jewelry",
            "hats",
            "perfume",
            "sunglasses",
            "bags",
            "jackets",
        ]
        .map(String::from)
        .to_vec(),
        ..DataValues::default()
    };
    let embedder = LazyEmbedder::new(paths::models_dir());
    let texts: Vec<String> = values.products.iter().map(|p| value_text(p)).collect();
    let product_vectors = embedder.embed(texts).await.unwrap().vectors;
    let as_of = NaiveDate::from_ymd_opt(2026, 6, 29).unwrap();
    let mut grounding = Grounding::of(question, &values, as_of);
    let words = grounding.unmatched.clone();
    let vectors = embedder.embed(words.clone()).await.unwrap().vectors;
    grounding.add_similar(&values, &product_vectors, &words.into_iter().zip(vectors).collect::<Vec<_>>());
    grounding
}

#[tokio::test]
async fn synonyms_match_near_misses_are_told_and_unrelated_words_are_reported() {
    assert_eq!(ground("customers who bought sneakers").await.found.products, ["shoes"]);
    assert_eq!(ground("people who purchased tees last month").await.found.products, ["t_shirts"]);
    assert_eq!(ground("who bought jewellery?").await.found.products, ["jewelry"]);
    let near = ground("who buys hiking gear?").await;
    assert!(near.found.products.is_empty() && near.unmatched.is_empty(), "{near:?}");
    assert!(near.hint_line().unwrap().contains("\"hiking gear\" = no such product (closest: running_gear)"));
    let unrelated = ground("customers who bought kayaks").await;
    assert_eq!(unrelated.unmatched, ["kayaks"]);
    assert!(unrelated.found.products.is_empty());
}
