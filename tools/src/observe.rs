//! What the model is sent of a tool's result: compact text, a line of facts and a `|`-separated table.
//!
//! Every agent call resends the conversation, so each token of a tool result is paid for again on every
//! later call of the question. The model gets only what it answers from: no SQL echo, no ranking scores
//! (the order says it), no repeated JSON keys, numbers rounded. The host keeps the full output (see
//! [`crate::trace::FullOutput`]) for the audience, the steps and `audience tool`.

use serde_json::Value;

/// A table: a header line, then one line per row, cells separated by `|`.
pub fn table<R>(columns: &[&str], rows: impl IntoIterator<Item = R>) -> String
where
    R: IntoIterator<Item = String>,
{
    let mut lines = vec![columns.join("|")];
    lines.extend(rows.into_iter().map(|row| row.into_iter().collect::<Vec<_>>().join("|")));
    lines.join("\n")
}

/// One table cell: text as is, arrays joined with `,`, numbers rounded, null empty. Line breaks and `|`
/// inside text would break the table, so such text is written as a JSON string.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) if text.contains(['|', '\n', '\r']) => Value::String(text.clone()).to_string(),
        Value::String(text) => text.clone(),
        Value::Number(number) => match (number.as_i64(), number.as_u64(), number.as_f64()) {
            (Some(int), _, _) => int.to_string(),
            (_, Some(int), _) => int.to_string(),
            (_, _, Some(float)) => round(float),
            _ => number.to_string(),
        },
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::Bool(_) | Value::Object(_) => value.to_string(),
    }
}

/// A float with the digits an answer needs: two decimals from 1 on (money, averages), four significant
/// digits below (rates, shares), without trailing zeros.
pub fn round(float: f64) -> String {
    if !float.is_finite() {
        return float.to_string();
    }
    let decimals = if float.abs() >= 1.0 || float == 0.0 {
        2
    } else {
        // Digits after the point up to and including the fourth significant one.
        (3 - float.abs().log10().floor() as i32).clamp(0, 12) as usize
    };
    let text = format!("{float:.decimals$}");
    let text = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { &text };
    if text == "-0" { "0".to_owned() } else { text.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_are_short_and_cannot_break_the_table() {
        assert_eq!(cell(&json!("Churn Recovery")), "Churn Recovery");
        assert_eq!(cell(&json!(["hats", "socks"])), "hats,socks");
        assert_eq!(cell(&json!(null)), "");
        assert_eq!(cell(&json!(42)), "42");
        assert_eq!(cell(&json!(true)), "true");
        assert_eq!(cell(&json!("a|b")), r#""a|b""#);
        assert_eq!(cell(&json!("two\nlines")), r#""two\nlines""#);
    }

    #[test]
    fn numbers_keep_the_digits_an_answer_needs() {
        assert_eq!(round(41.233333333), "41.23");
        assert_eq!(round(105.16), "105.16");
        assert_eq!(round(250.0), "250");
        assert_eq!(round(0.084700003), "0.0847");
        assert_eq!(round(0.000123456), "0.0001235");
        assert_eq!(round(-1.005), "-1");
        assert_eq!(round(-0.0001), "-0.0001");
        assert_eq!(round(0.0), "0");
    }

    #[test]
    fn tables_have_a_header_and_one_line_per_row() {
        let rows = vec![vec!["PL".to_owned(), "11".to_owned()], vec!["US".to_owned(), "11".to_owned()]];
        assert_eq!(table(&["country", "customers"], rows), "country|customers\nPL|11\nUS|11");
    }
}
