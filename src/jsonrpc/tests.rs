use super::*;
use scan::Text;

fn parse(s: &str) -> Result<Message, FrameError> {
    Message::parse(Bytes::copy_from_slice(s.as_bytes()))
}

#[test]
fn request_notification_and_response_are_told_apart() {
    let req = parse(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{}}"#).unwrap();
    assert_eq!(req.kind(), Kind::Request);
    assert_eq!(req.id().unwrap().raw(), "7");
    assert_eq!(req.method(), Some("tools/call"));
    let note = parse(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
    assert_eq!(note.kind(), Kind::Notification);
    let resp = parse(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#).unwrap();
    assert_eq!(resp.kind(), Kind::Response);
    assert_eq!(resp.id().unwrap().raw(), "\"a\"");
}

#[test]
fn malformed_bodies_get_the_standard_codes() {
    assert_eq!(parse("{not json").unwrap_err().code(), code::PARSE_ERROR);
    assert_eq!(parse("").unwrap_err().code(), code::PARSE_ERROR);
    assert_eq!(parse("[]").unwrap_err(), FrameError::Batch);
    assert_eq!(parse("42").unwrap_err(), FrameError::NotObject);
    assert_eq!(
        parse(r#"{"id":1,"method":"x"}"#).unwrap_err(),
        FrameError::BadVersion
    );
    assert_eq!(
        parse(r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#).unwrap_err(),
        FrameError::BadVersion
    );
    assert_eq!(
        parse(r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#).unwrap_err(),
        FrameError::BadId
    );
    assert_eq!(
        parse(r#"{"jsonrpc":"2.0","id":1}"#).unwrap_err(),
        FrameError::NoMethod
    );
    let bad_utf8 = Message::parse(Bytes::from_static(b"{\"a\":\"\xff\"}"));
    assert_eq!(bad_utf8.unwrap_err(), FrameError::NotUtf8);
}

#[test]
fn with_id_rewrites_only_the_id_and_keeps_everything_else_verbatim() {
    let original =
        r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"b":1,  "a":[1, 2]},"x-extra":true}"#;
    let msg = parse(original).unwrap();
    let moved = msg.with_id(&Id::from_raw("\"airlock-9\""));
    assert_eq!(
        moved.text(),
        r#"{"jsonrpc":"2.0","id":"airlock-9","method":"m","params":{"b":1,  "a":[1, 2]},"x-extra":true}"#
    );
    assert_eq!(moved.id().unwrap().raw(), "\"airlock-9\"");
}

#[test]
fn error_response_echoes_the_id() {
    let e = error_response(&Id::from_raw("\"x\""), code::INVALID_PARAMS, "nope");
    assert_eq!(
        e.text(),
        r#"{"jsonrpc":"2.0","id":"x","error":{"code":-32602,"message":"nope"}}"#
    );
    assert_eq!(error_code(&e), Some(-32602));
}

#[test]
fn null_ids_and_policed_notifications_are_refused() {
    assert_eq!(
        parse(r#"{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{}}"#).unwrap_err(),
        FrameError::NullId
    );
    assert_eq!(
        parse(r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x"}}"#).unwrap_err(),
        FrameError::MustBeRequest("tools/call".into())
    );
    let error =
        parse(r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"m"}}"#).unwrap();
    assert_eq!(error.kind(), Kind::Response);
    assert_eq!(error.with_id(&Id::from_raw("5")).id().unwrap().raw(), "5");
    let no_id = parse(r#"{"jsonrpc":"2.0","error":{"code":-32000,"message":"m"}}"#).unwrap();
    assert_eq!(
        no_id.with_id(&Id::from_raw("5")).text(),
        r#"{"id":5,"jsonrpc":"2.0","error":{"code":-32000,"message":"m"}}"#
    );
}

#[test]
fn numeric_ids_must_be_plain_safe_integers() {
    for ok in ["0", "7", "-3", "9007199254740991", "-9007199254740991"] {
        let msg = parse(&format!(r#"{{"jsonrpc":"2.0","id":{ok},"method":"m"}}"#)).unwrap();
        assert_eq!(msg.id().unwrap().raw(), ok);
    }
    for bad in [
        "1.0",
        "1e0",
        "1E2",
        "2.5",
        "-0",
        "1.5e3",
        "9007199254740992",
        "99999999999999999999",
        "-9007199254740992",
    ] {
        assert_eq!(
            parse(&format!(r#"{{"jsonrpc":"2.0","id":{bad},"method":"m"}}"#)).unwrap_err(),
            FrameError::NumericId(bad.into()),
            "{bad}"
        );
        // An agent's answer to a server request is held to the same rule.
        let answer = parse(&format!(r#"{{"jsonrpc":"2.0","id":{bad},"result":{{}}}}"#));
        assert_eq!(answer.unwrap_err().code(), code::INVALID_REQUEST, "{bad}");
    }
    // Leading zeros are not JSON at all.
    assert_eq!(
        parse(r#"{"jsonrpc":"2.0","id":01,"method":"m"}"#)
            .unwrap_err()
            .code(),
        code::PARSE_ERROR
    );
    // Strings are ids as they are, whatever they spell.
    assert!(parse(r#"{"jsonrpc":"2.0","id":"1.0","method":"m"}"#).is_ok());
}

#[test]
fn by_position_params_are_invalid_params_with_the_request_id() {
    let err = parse(
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":["delete_record",{"id":"x"}]}"#,
    )
    .unwrap_err();
    assert_eq!(err.code(), code::INVALID_PARAMS);
    assert_eq!(err.id().map(Id::raw), Some("3"));
    assert!(err.to_string().contains("not an array"), "{err}");
    for (params, got) in [
        ("\"x\"", "a string"),
        ("1", "a number"),
        ("true", "a boolean"),
    ] {
        let err = parse(&format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{params}}}"#
        ))
        .unwrap_err();
        assert_eq!(
            err,
            FrameError::ParamsNotObject {
                id: Some(Id::from_raw("1")),
                got
            }
        );
    }
    // A notification has no id to answer with.
    let note = parse(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":[1]}"#);
    assert_eq!(note.unwrap_err().id(), None);
    // Named params, and `null` (read as absent), are fine.
    assert!(parse(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#).is_ok());
    assert!(parse(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":null}"#).is_ok());
}

#[test]
fn progress_token_rewrite_keeps_every_other_value_as_written() {
    // Duplicate keys stay duplicated (the gate refused them; a Value round
    // trip would fold them into one readable call), numbers and escapes stay.
    let raw = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b","arguments":{"n":100000000000000000001,"s":"\u0061"},"_meta":{"progressToken":"p","x":1}}}"#;
    let out = parse(raw).unwrap().with_progress_token(r#""airlock-p-1""#);
    assert_eq!(
        out.text(),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b","arguments":{"n":100000000000000000001,"s":"\u0061"},"_meta":{"progressToken":"airlock-p-1","x":1}}}"#
    );
    let note = parse(r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":7,"progress":1}}"#).unwrap();
    assert_eq!(
        note.with_progress_token("\"t\"").text(),
        r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t","progress":1}}"#
    );
    let none = parse(r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#).unwrap();
    assert_eq!(none.with_progress_token("\"t\"").text(), none.text());
}

#[test]
fn id_rewrite_adds_an_id_to_an_object_without_one() {
    let m = parse(r#"{"jsonrpc":"2.0","id":"x","result":{}}"#).unwrap();
    assert_eq!(
        m.with_id(&Id::from_raw("5")).text(),
        r#"{"jsonrpc":"2.0","id":5,"result":{}}"#
    );
}

#[test]
fn serde_jsons_number_token_is_refused_in_any_spelling() {
    // With arbitrary_precision, serde_json reads {"<token>":"5"} as the number 5:
    // an approver or a condition would see 5 where the upstream gets an object.
    for body in [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"pay","arguments":{"amount":{"$serde_json::private::Number":"5"}}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"pay","arguments":{"amount":{"\u0024serde_json::private::Number":"5"}}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":["$serde_json::private::Number"]}}"#,
    ] {
        let err = parse(body).unwrap_err();
        assert_eq!(
            err,
            FrameError::ReservedKey("$serde_json::private::Number"),
            "{body}"
        );
        assert!(err.to_string().contains("$serde_json::private::Number"));
    }
    // A `$` elsewhere, escapes elsewhere and real big numbers are fine.
    let ok = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"pay","arguments":{"$ref":"a\u0024b","n":123456789012345678901234567890,"q":"say \"hi\""}}}"#;
    assert!(parse(ok).is_ok());
}

#[test]
fn serde_jsons_raw_value_token_is_refused_in_any_spelling() {
    // With raw_value, serde_json reads {"<token>":"<json text>"} as the JSON
    // in the string: a condition would see "/etc/passwd" (or `2026`, from
    // "2026-07-28", with an error) where the upstream gets an object.
    // Found by the line_framing_stateless fuzz target.
    for body in [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read","arguments":{"path":{"$serde_json::private::RawValue":"\"/etc/passwd\""}}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"$serde_json::private::RawValue":"2026-07-28"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"\u0024serde_json::private::Raw\u0056alue":1}}"#,
        r#"{"jsonrpc":"2.0","id":1,"result":{"a":"$serde_json::private::RawValue"}}"#,
    ] {
        let err = parse(body).unwrap_err();
        assert_eq!(
            err,
            FrameError::ReservedKey("$serde_json::private::RawValue"),
            "{body}"
        );
        assert_eq!(err.code(), code::INVALID_REQUEST);
    }
    // What the fuzz target compared: serde_json really reads it otherwise.
    let value: Result<serde_json::Value, _> =
        serde_json::from_str(r#"{"$serde_json::private::RawValue":"\"x\""}"#);
    assert_eq!(value.unwrap(), serde_json::json!("x"));
    // Near misses pass.
    let ok = r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"$serde_json::private::RawValu":1,"x":"$serde_json::private::"}}"#;
    assert!(parse(ok).is_ok());
}

#[test]
fn lone_surrogate_escapes_are_refused_and_pairs_pass() {
    let lone = r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":{"a\udddd":1}}}"#;
    assert_eq!(parse(lone).unwrap_err(), FrameError::LoneSurrogate);
    assert_eq!(FrameError::LoneSurrogate.code(), code::PARSE_ERROR);
    let pair = r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"\ud83d\ude00"}}"#;
    assert!(parse(pair).is_ok());
}

#[test]
fn params_are_read_from_their_recorded_span_alone() {
    #[derive(Deserialize, Debug, PartialEq)]
    struct Named<'a> {
        name: &'a str,
    }
    let text = r#"{ "params" : {"name":"echo"} , "jsonrpc":"2.0","id":1,"method":"tools/call"}"#;
    let m = parse(text).unwrap();
    assert_eq!(m.params, Some(Span { start: 13, end: 28 }));
    assert_eq!(m.params::<Named>(), Some(Named { name: "echo" }));
    // A rewritten id moves the recorded ranges with the splice.
    let moved = m.with_id(&Id::from_raw("\"longer-id\""));
    assert_eq!(moved.params, Some(Span { start: 13, end: 28 }));
    assert_eq!(moved.params::<Named>(), Some(Named { name: "echo" }));
    // Absent, null and unreadable params.
    let none = parse(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).unwrap();
    assert_eq!(none.params_strict::<Named>(), Ok(None));
    let null = parse(r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":null}"#).unwrap();
    assert_eq!(null.params_strict::<Named>(), Ok(None));
    let twice =
        parse(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"name":"a","name":"b"}}"#).unwrap();
    assert!(
        twice
            .params_strict::<Named>()
            .unwrap_err()
            .contains("duplicate field `name`")
    );
    // A second `params` key never reaches the peeks: the envelope refuses it.
    assert!(parse(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{},"params":{}}"#).is_err());
}

// --- the one pass (`scan`) -------------------------------------------------

fn facts(text: &str) -> Result<Option<ParamFacts>, String> {
    let m = parse(text).unwrap();
    m.param_facts().map(|f| f.cloned()).map_err(str::to_owned)
}

fn call(params: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{params}}}"#)
}

#[test]
fn the_one_pass_records_the_call_facts_where_they_are() {
    let text = call(
        r#"{"name":"echo","arguments":{"a":[1,{"b":null}],"c":"\u0064"},"requestState":"s1","_meta":{"progressToken":7,"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"n","version":"v"},"io.modelcontextprotocol/clientCapabilities":{"x":{}},"other":[1]},"extra":{"deep":[[]]}}"#,
    );
    let m = parse(&text).unwrap();
    let f = m.param_facts().unwrap().unwrap();
    let t = m.text();
    assert_eq!(f.name.as_ref().unwrap().get(t), "echo");
    let args = f.arguments.unwrap();
    assert_eq!(
        &t[args.start..args.end],
        r#"{"a":[1,{"b":null}],"c":"\u0064"}"#
    );
    assert_eq!(f.request_state.as_ref().unwrap().get(t), "s1");
    let meta = f.meta.as_ref().unwrap();
    let token = meta.progress_token.unwrap();
    assert_eq!(&t[token.start..token.end], "7");
    assert_eq!(meta.protocol_version.as_ref().unwrap().get(t), "2026-07-28");
    let info = meta.client_info.as_ref().unwrap();
    assert_eq!(info.name.as_ref().unwrap().get(t), "n");
    let caps = meta.client_capabilities.unwrap();
    assert_eq!(&t[caps.start..caps.end], r#"{"x":{}}"#);
    // An escaped name is decoded.
    let escaped = facts(&call(r#"{"name":"ec\u0068o"}"#)).unwrap().unwrap();
    assert_eq!(escaped.name, Some(Text::Decoded("echo".into())));
}

#[test]
fn repeated_keys_anywhere_in_params_make_them_unreadable() {
    for (params, key) in [
        (r#"{"name":"a","name":"b"}"#, "name"),
        (r#"{"name":"a","arguments":{"id":1,"\u0069d":2}}"#, "id"),
        (
            r#"{"name":"a","arguments":{"a":[{"b":{"c":1,"c":2}}]}}"#,
            "c",
        ),
        (
            r#"{"name":"a","_meta":{"progressToken":1,"progressToken":2}}"#,
            "progressToken",
        ),
        (r#"{"name":"a","x":1,"x":2}"#, "x"),
    ] {
        let why = facts(&call(params)).unwrap_err();
        assert!(
            why.contains(&format!("duplicate key `{key}`")),
            "{params}: {why}"
        );
    }
    // The same key in sibling objects is fine.
    let ok = call(r#"{"name":"a","arguments":{"a":1,"b":{"a":2},"c":[{"a":1},{"a":2}]}}"#);
    assert!(facts(&ok).unwrap().is_some());
    // Past the linear scan (16 keys), repeats are still found.
    let mut keys: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
    let unique = call(&format!(
        r#"{{"name":"a","arguments":{{{}}}}}"#,
        keys.join(",")
    ));
    assert!(facts(&unique).unwrap().is_some());
    for repeat in ["k3", "k20"] {
        keys.push(format!("\"{repeat}\":0"));
        let twice = call(&format!(
            r#"{{"name":"a","arguments":{{{}}}}}"#,
            keys.join(",")
        ));
        let why = facts(&twice).unwrap_err();
        assert!(why.contains(&format!("duplicate key `{repeat}`")), "{why}");
        keys.pop();
    }
    // In the envelope, a repeated key is not JSON-RPC at all.
    assert!(matches!(
        parse(r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#),
        Err(FrameError::NotJson(_))
    ));
}

#[test]
fn known_fields_of_the_wrong_type_make_params_unreadable() {
    for params in [
        r#"{"name":5}"#,
        r#"{"name":"a","requestState":{}}"#,
        r#"{"name":"a","_meta":"x"}"#,
        r#"{"name":"a","_meta":{"io.modelcontextprotocol/protocolVersion":1}}"#,
        r#"{"clientInfo":[]}"#,
    ] {
        assert!(facts(&call(params)).is_err(), "{params}");
    }
    // `null` reads as absent, as serde's `Option` reads it.
    let nulls = facts(&call(
        r#"{"name":"a","arguments":null,"_meta":null,"uri":null}"#,
    ))
    .unwrap()
    .unwrap();
    assert_eq!((nulls.arguments, nulls.meta, nulls.uri), (None, None, None));
}

#[test]
fn arguments_nested_past_serde_json_recursion_limit_are_unreadable() {
    let nested = |n: usize| {
        call(&format!(
            r#"{{"name":"a","arguments":{}1{}}}"#,
            "[".repeat(n),
            "]".repeat(n)
        ))
    };
    assert!(facts(&nested(127)).unwrap().is_some());
    assert!(facts(&nested(128)).unwrap_err().contains("recursion limit"));
    // Elsewhere values are skipped without a limit, as serde_json skips them.
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":1,"result":{}1{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    assert!(parse(&deep).is_ok());
}

#[test]
fn the_one_pass_refuses_what_serde_json_refuses() {
    for bad in [
        r#"{"jsonrpc":"2.0","id":1,"method":"ping",}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping"} x"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":01}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":1.}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":-}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":[1,]}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":"\x"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":"\u12"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":tru}}"#,
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{\"a\":\"\t\"}}",
        r#"{"jsonrpc":"2.0","id":1,"method":5}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":1}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a" 1}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{1:1}}"#,
    ] {
        assert!(
            serde_json::from_str::<serde_json::Value>(bad).is_err() || bad.contains("\"method\":5"),
            "serde_json accepts {bad}"
        );
        assert!(
            matches!(parse(bad), Err(FrameError::NotJson(_))),
            "{bad}: {:?}",
            parse(bad)
        );
    }
    // And accepts what it accepts: blanks, exponents, escapes, big numbers.
    let ok = " {\n\"jsonrpc\" : \"2.0\",\t\"id\":\"a\\\"b\",\"method\":\"m\",\"params\":{\"n\":[-0.5e+10,0,1E-2,true,false,null,\"\\/\\b\\f\\n\\r\\t\"]}}\r\n";
    assert!(serde_json::from_str::<serde_json::Value>(ok).is_ok());
    assert!(parse(ok).is_ok(), "{:?}", parse(ok));
}

#[test]
fn with_id_splices_and_keeps_the_recorded_ranges() {
    let m = parse(&call(
        r#"{"name":"echo","arguments":{"x":1},"_meta":{"progressToken":"t"}}"#,
    ))
    .unwrap();
    let moved = m.with_id(&Id::from_raw("\"airlock-12345\""));
    assert_eq!(
        moved.text(),
        call(r#"{"name":"echo","arguments":{"x":1},"_meta":{"progressToken":"t"}}"#)
            .replace(r#""id":1"#, r#""id":"airlock-12345""#)
    );
    let reread = parse(moved.text()).unwrap();
    assert_eq!(moved.param_facts().unwrap(), reread.param_facts().unwrap());
    assert_eq!(moved.id_span, reread.id_span);
    // Without an id: added after the `{`, with or without other keys.
    let answer = parse(r#"{"jsonrpc":"2.0","result":{"a":1}}"#).unwrap();
    assert_eq!(
        answer.with_id(&Id::from_raw("3")).text(),
        r#"{"id":3,"jsonrpc":"2.0","result":{"a":1}}"#
    );
    let back = parse(r#"{"jsonrpc":"2.0","id":null,"error":{"code":1,"message":"m"}}"#).unwrap();
    let fixed = back.with_id(&Id::from_raw("\"x\""));
    assert_eq!(
        fixed.text(),
        r#"{"jsonrpc":"2.0","id":"x","error":{"code":1,"message":"m"}}"#
    );
    assert_eq!(parse(fixed.text()).unwrap().id().unwrap().raw(), "\"x\"");
}

#[test]
fn a_metered_message_counts_every_json_read_of_its_bytes() {
    let meter = ParseMeter::default();
    let m = Message::parse_metered(
        Bytes::from(call(r#"{"name":"echo","arguments":{}}"#)),
        &meter,
    )
    .unwrap();
    assert_eq!(meter.get(), 1);
    // Reading the recorded facts and rewriting the id read nothing again.
    let _ = m.param_facts();
    let moved = m.with_id(&Id::from_raw("9"));
    assert_eq!(meter.get(), 1);
    // A generic peek is a JSON read, on the rewritten message too.
    let _ = moved.params::<serde::de::IgnoredAny>();
    assert_eq!(meter.get(), 2);
    // An unmetered message counts nowhere.
    let _ = parse(&call("{}"))
        .unwrap()
        .params::<serde::de::IgnoredAny>();
    assert_eq!(meter.get(), 2);
}

#[test]
fn a_progress_token_rewrite_splices_and_keeps_the_recorded_ranges() {
    let meter = ParseMeter::default();
    let text = call(r#"{"name":"echo","_meta":{"progressToken":"t","x":1},"arguments":{"a":"b"}}"#);
    let m = Message::parse_metered(Bytes::from(text.clone()), &meter).unwrap();
    let ours = m
        .with_id(&Id::from_raw("\"airlock-1\""))
        .with_progress_token("\"airlock-p-22\"");
    assert_eq!(meter.get(), 1, "no JSON read again");
    let expected = text
        .replace(r#""id":1"#, r#""id":"airlock-1""#)
        .replace(r#""t""#, r#""airlock-p-22""#);
    assert_eq!(ours.text(), expected);
    let reread = parse(ours.text()).unwrap();
    assert_eq!(ours.param_facts().unwrap(), reread.param_facts().unwrap());
    assert_eq!((ours.params, ours.id_span), (reread.params, reread.id_span));
}

#[test]
fn strings_of_every_length_are_scanned_to_their_end() {
    // The scan reads eight bytes at a time: a quote, an escape or a control
    // character at any offset, in any string length, ends or breaks it there.
    for len in 0..24 {
        for at in 0..len {
            let mut chars: Vec<char> = "abcdéfghijklmnopqrstuvwxyz".chars().take(len).collect();
            let plain: String = chars.iter().collect();
            let ok =
                format!(r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{{"k":"{plain}"}}}}"#);
            assert!(parse(&ok).is_ok(), "{ok}");
            chars[at] = '\t';
            let raw: String = chars.iter().collect();
            let bad =
                format!(r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{{"k":"{raw}"}}}}"#);
            assert!(
                matches!(parse(&bad), Err(FrameError::NotJson(_))),
                "{bad:?}"
            );
            chars[at] = '"';
            let cut: String = chars.iter().collect();
            let bad =
                format!(r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{{"k":"{cut}"}}}}"#);
            assert!(parse(&bad).is_err(), "{bad:?}");
        }
    }
    // A skipped value that spells the reserved key with escapes is found too.
    let spelled = r#"{"jsonrpc":"2.0","id":1,"result":{"a":"\u0024serde_json::private::Number"}}"#;
    assert_eq!(
        parse(spelled).unwrap_err(),
        FrameError::ReservedKey("$serde_json::private::Number")
    );
}

#[test]
fn a_detached_message_owns_its_bytes_and_reads_the_same() {
    // A body as hyper hands it over: a slice of the connection's read buffer.
    let text = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"t","arguments":{"a":1}}}"#;
    let buffer = Bytes::from(format!(
        "POST /mcp HTTP/1.1\r\n\r\n{text}{}",
        " ".repeat(8000)
    ));
    let body = buffer.slice(22..22 + text.len());
    let message = Message::parse(body.clone()).unwrap();
    assert_eq!(message.raw().as_ptr(), body.as_ptr());
    let detached = message.detached();
    assert_ne!(detached.raw().as_ptr(), body.as_ptr());
    assert_eq!(detached.text(), text);
    assert_eq!(detached.id().unwrap().raw(), "7");
    assert_eq!(detached.method(), Some("tools/call"));
    let facts = detached.param_facts().unwrap().unwrap();
    let arguments = facts.arguments.unwrap();
    assert_eq!(
        &detached.text()[arguments.start..arguments.end],
        r#"{"a":1}"#
    );
}
