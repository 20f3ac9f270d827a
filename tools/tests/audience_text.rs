//! The plain-language form of audience definitions, generated from the type (never by the LLM): one snapshot of
//! how each kind of clause, exclusion and intent reads.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; that is its job

use audience_tools::audience::AudienceDefinition;
use serde_json::{Value, json};

fn explain(value: Value) -> String {
    let mut value = value;
    value["version"] = json!(1);
    value["limit"] = json!(10);
    AudienceDefinition::from_json(&value.to_string()).unwrap().explain()
}

#[test]
fn definitions_read_as_a_marketer_would_say_them() {
    let profile =
        |field: &str, op: &str, value: Value| json!({"type": "profile", "field": field, "op": op, "value": value});
    let event = |fields: Value| {
        let mut clause = json!({"type": "event"});
        for (key, value) in fields.as_object().unwrap() {
            clause[key] = value.clone();
        }
        clause
    };
    let definitions = [
        json!({}),
        json!({"intent": "luxury watches and jewelry"}),
        json!({"include": [event(json!({"event_type": "purchase", "products": ["socks"], "within_days": 60})),
                           profile("country", "=", json!("pl"))],
               "exclude": [profile("churned", "=", json!(true))], "intent": "likes luxury"}),
        json!({"include": [event(json!({"event_type": "view", "products": ["watches", "jewelry", "bags"], "colors": ["gold"]}))]}),
        json!({"include": [event(json!({"event_type": "add_to_cart", "min_price": 100, "max_price": 500}))]}),
        json!({"include": [event(json!({"event_type": "purchase", "min_count": 3, "within_days": 1}))]}),
        json!({"include": [event(json!({})), event(json!({"products": ["hats"], "sql": "quantity >= 2"}))]}),
        json!({"include": [profile("total_spent", ">", json!(500)), profile("recency_days", ">=", json!(90))]}),
        json!({"include": [profile("age", "<", json!(30)), profile("order_count", ">=", json!(2)),
                           profile("return_count", "=", json!(0))]}),
        json!({"include": [profile("segment", "in", json!(["VIP Loyalty", "Standard Promo"])),
                           profile("likes_luxury", "=", json!(false)), profile("interests", "contains", json!("shoes"))]}),
        json!({"include": [profile("favorite_color", "!=", json!("red")), profile("r_score", "<=", json!(2)),
                           profile("preferred_colors", "contains", json!("black"))]}),
        json!({"exclude": [profile("country", "in", json!(["DE", "AT"])), event(json!({"event_type": "purchase", "within_days": 30})),
                           profile("churned", "=", json!(false))]}),
        json!({"include": [{"type": "sql", "condition": "age > 40 AND country <> 'US'"}], "intent": "  outdoor gear  "}),
    ];
    let text: Vec<String> = definitions.into_iter().map(explain).collect();
    insta::assert_snapshot!("explanations", text.join("\n"));
}
