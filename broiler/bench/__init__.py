"""`broiler bench`: the cost of every IO path per guest operation, beside a C floor and a bare
Python loop, measured side by side in one process (issue 7 item 3). See docs/bench.md."""
