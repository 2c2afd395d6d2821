"""Odd headers: content types that lie, ``x-dataset`` garbage, parameters and names that are
not UTF-8, huge values; and whether a good request must still be served with them."""

from __future__ import annotations

from pipelines.formats import CONTENT_TYPES
from stream.types import Headers
from tests.fuzz.fuzzer import ODD_TEXT, Fuzzer
from tests.fuzz.targets import Target


def odd_headers(fz: Fuzzer, headers: Headers, target: Target) -> tuple[Headers, bool]:
    """``headers`` plus odd ones; also says whether a good request must still be served."""
    rng = fz.rng
    extra: list[tuple[str, bytes]] = []
    harmless = True
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(9)
        if choice == 0:  # text that is not UTF-8, or a name Python kept undecodable bytes in
            extra.append(
                (
                    rng.choice(("x-trace", "x-\udcff", "x-名前", "X-Request-Id")),
                    rng.choice(ODD_TEXT),
                )
            )
        elif choice == 1:
            extra.append(("x-request-id", rng.choice(ODD_TEXT)))
        elif choice == 2:
            extra.append(("x-huge", b"h" * 70_000))
        elif choice == 3:
            if target.name != "digits":  # only digits reads a parameter (scale)
                extra.append(
                    (
                        rng.choice(("x-param-scale", "x-param-\udcff", "X-Param-mode")),
                        rng.choice(ODD_TEXT),
                    )
                )
            else:
                extra.append(
                    ("x-param-scale", rng.choice((b"abc", b"-1", b"nan", b"\xff", b"1e400")))
                )
                harmless = False
        elif choice == 4:
            extra.append(
                ("x-dataset", rng.choice((b"*", b"out", b"metadata", b"meta", b"out,in,time")))
            )
        elif choice == 5:
            extra.append(
                (
                    rng.choice(("x-dataset", "x-dataset-exclude")),
                    rng.choice((b"nope", b",,", b"\xff\xfe", b"out.nope", b"*,metadata.elapsed")),
                )
            )
            harmless = False
        elif choice == 6:
            extra.append(("x-dataset-separator", rng.choice((b"/", b"", b"..", b"\x00", b"\xff"))))
            harmless = False
        elif choice == 7:  # a content type that lies
            lie = rng.choice(
                (*CONTENT_TYPES.values(), "text/csv", "application/json; format=weird", "\udcff")
            )
            headers = (("content-type", lie.encode("utf-8", "surrogateescape")),)
            harmless = False
        else:
            extra.append(
                ("content-type", rng.choice((b"\xff\xfe", b"application/json; charset=\xff")))
            )
            harmless = False
    return (*headers, *extra), harmless
