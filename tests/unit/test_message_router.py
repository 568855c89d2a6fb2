"""The message router: MQTT filters with wildcards, the first match wins, an unknown topic is left alone."""

from edge.mes.router import MessageRouter


def test_first_matching_filter_gets_the_payload():
    heard: list[tuple[str, bytes]] = []
    router = MessageRouter(
        [
            ("fab/mes/process/#", lambda p: heard.append(("process", p))),
            ("fab/mes/lot/+", lambda p: heard.append(("lot", p))),
            ("fab/edge/ST-1/reviews", lambda p: heard.append(("review", p))),
            ("fab/#", lambda p: heard.append(("anything else", p))),
        ]
    )
    assert router.filters == ("fab/mes/process/#", "fab/mes/lot/+", "fab/edge/ST-1/reviews", "fab/#")
    assert router.on_message("fab/mes/process/AOI-01/W7", b"1")
    assert router.on_message("fab/mes/lot/AOI-01", b"2")
    assert router.on_message("fab/edge/ST-1/reviews", b"3")
    assert router.on_message("fab/mes/lot/AOI-01/extra", b"4")  # + is one level: falls through to fab/#
    assert not router.on_message("plant/other", b"5")
    assert heard == [("process", b"1"), ("lot", b"2"), ("review", b"3"), ("anything else", b"4")]
