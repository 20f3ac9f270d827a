//! A customer profile as stored in the `profiles` table and as the payload of its vector point.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The profile columns the vector payload carries. Field names are the payload keys.
/// `calculated_interests` is the design's name for the `interests` column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct ProfilePayload {
    pub customer_id: i64,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub country: String,
    pub age: Option<i32>,
    pub favorite_color: Option<String>,
    pub total_spent: f64,
    #[sqlx(rename = "interests")]
    pub calculated_interests: Vec<String>,
    pub preferred_colors: Vec<String>,
    pub likes_luxury: bool,
    pub segment: String,
    pub churned: bool,
    pub recency_days: Option<i32>,
    pub frequency: i32,
    pub monetary: f64,
    pub r_score: i16,
    pub f_score: i16,
    pub m_score: i16,
    pub text_hash: String,
}

/// The SELECT list that reads a [`ProfilePayload`] from the `profiles` table.
pub const PAYLOAD_SELECT: &str = "customer_id, first_name, last_name, email, country, age, favorite_color, \
    total_spent::float8 AS total_spent, interests, preferred_colors, likes_luxury, segment, churned, \
    recency_days, frequency, monetary::float8 AS monetary, r_score, f_score, m_score, text_hash";

impl ProfilePayload {
    /// The payload as a JSON object, with `rfm_score` (e.g. "545") added for display.
    pub fn to_payload(&self) -> Map<String, Value> {
        let mut map = match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        map.insert("rfm_score".into(), Value::String(format!("{}{}{}", self.r_score, self.f_score, self.m_score)));
        map
    }
}
