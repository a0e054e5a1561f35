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

-- Answers: the exact two-sided McNemar test p-value for b and c discordant pairs
-- (b = right in run A and wrong in run B, c = the reverse): under "no change" each of the
-- n = b + c flips goes either way with probability 1/2, so
--     p = min(1, 2 * sum_{i <= min(b, c)} C(n, i) / 2^n),   and p = 1 when n = 0.
-- Why lgamma: DuckDB has no binomial CDF, and C(n, i) / 2^n overflows / underflows a double
-- for n in the thousands. Each term is exp(log C(n, i) - n log 2) with log C from lgamma,
-- summed relative to the largest term (i = min(b, c)): relative error about 1e-11 for
-- n up to a few thousand (tested against Python's exact math.comb); a p-value below
-- ~1e-308 underflows to 0. NULL when b or c is NULL.
-- Parameters: none (b, c: counts >= 0).
CREATE OR REPLACE MACRO binom_half_log_pmf(i, n) AS
    lgamma(CAST(n AS DOUBLE) + 1) - lgamma(CAST(i AS DOUBLE) + 1) - lgamma(CAST(n AS DOUBLE) - i + 1)
    - n * ln(CAST(2 AS DOUBLE));

CREATE OR REPLACE MACRO mcnemar_p(b, c) AS
    CASE
        WHEN b IS NULL OR c IS NULL THEN NULL
        WHEN b + c = 0 THEN CAST(1 AS DOUBLE)
        ELSE least(CAST(1 AS DOUBLE), exp(
            ln(CAST(2 AS DOUBLE)) + binom_half_log_pmf(least(b, c), b + c)
            + ln(list_sum(list_transform(range(0, least(b, c) + 1),
                 lambda mcnemar_i: exp(binom_half_log_pmf(mcnemar_i, b + c) - binom_half_log_pmf(least(b, c), b + c)))))))
    END;
