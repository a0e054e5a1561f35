-- Helper macros used by the views below.
-- Answers: the 95% Wilson score interval of a proportion k/n (NULL when n = 0).
-- Why Wilson: unlike the normal approximation it stays inside [0, 1] and is
-- sensible for small n and for accuracies near 0 or 1 (small per-class counts).
-- Parameters: none (k = successes, n = trials; z = 1.959963984540054, z^2 below).
-- Clamped to [0, 1]: at k = 0 or k = n rounding would otherwise step just outside.

CREATE OR REPLACE MACRO wilson_low(k, n) AS
    CASE WHEN n > 0 THEN greatest(CAST(0 AS DOUBLE),
        ((k / n) + 3.8414588206941245 / (2 * n)
         - 1.959963984540054 * sqrt((k / n) * (1 - k / n) / n + 3.8414588206941245 / (4 * n * n)))
        / (1 + 3.8414588206941245 / n))
    END;

CREATE OR REPLACE MACRO wilson_high(k, n) AS
    CASE WHEN n > 0 THEN least(CAST(1 AS DOUBLE),
        ((k / n) + 3.8414588206941245 / (2 * n)
         + 1.959963984540054 * sqrt((k / n) * (1 - k / n) / n + 3.8414588206941245 / (4 * n * n)))
        / (1 + 3.8414588206941245 / n))
    END;
