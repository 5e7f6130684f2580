"""The project's own fuzzer: property checks over the pure parsers and a network fuzzer over the listeners.

    properties.py     one check per parser or policy function: raises AssertionError on a violation;
                      shared by the hypothesis tests (test_properties.py) and the atheris harness
    parsers_atheris.py coverage-guided long pass over the same checks (scripts/fuzz --parsers N)
    grammar.py        SMTP dialogs: well-formed ones from a small grammar, then mutated (bytes, lines,
                      pipelining, early disconnects, hostile messages); a fixed seed gives the same dialogs
    wire.py           plays one dialog against a listener over loopback and records every reply
    oracle.py         what counts as a finding: 4xx/5xx without an enhanced code, an internal error
                      (451 4.3.0 or an error-level log line), a hang; classes the other branches fix
    targets.py        the listeners the fuzzer drives (submission today; the MX listener plugs in later)
    runner.py         a pass: dialogs x seed x budget, concurrency, figures; ``python -m tests.fuzz.runner``
    dialogfile.py     the raw dialogs in tests/data/fuzz/ that became regular tests (test_regressions.py)
"""
