namespace PruneKernel.Evaluation.Datasets.Generation;

/// <summary>
/// Grows a context exchange by exchange until its prompt reaches a token target, then closes the gap by adding or
/// removing single sentences (short acknowledgements for the last few tokens), re-measuring the exact count each time.
/// </summary>
internal sealed class TokenLengthFitter(PromptTokenCounter counter)
{
    private const int MaxAdjustments = 40;
    private const int TurnOverhead = 8;

    /// <summary>Fitted turns and their exact prompt token count.</summary>
    public (List<ContextTurn> Turns, int Tokens) Fit(
        ContextWriter writer, DeterministicRandom rng, Func<IReadOnlyList<ContextTurn>, BenchmarkItem> makeItem, int target, string? cue)
    {
        var exchanges = new List<Exchange>();
        int Measure() => counter.Count(makeItem(Turns(exchanges)));

        var tokens = Measure();
        var tolerance = (int)Math.Floor(target * 0.02);
        if (tokens > target + tolerance)
        {
            throw new DatasetOptionsException($"--groups: {target} tokens is shorter than the question alone ({tokens} tokens).");
        }

        var estimate = tokens;
        while (estimate < target)
        {
            var exchange = writer.Next();
            exchanges.Add(exchange);
            estimate += TurnOverhead + counter.Estimate(exchange.User) + exchange.Assistant.Sum(s => counter.Estimate(s.Text));
        }

        if (cue is not null)
        {
            if (exchanges.Count == 0)
            {
                exchanges.Add(writer.Next());
            }

            var host = exchanges[rng.Next(exchanges.Count)];
            host.Assistant.Insert(rng.Next(host.Assistant.Count + 1), new Sentence(cue, false));
            host.Locked = true;
        }

        // Aim inside half the allowed band, so the recorded count sits well within +-2 %.
        var aim = Math.Max(1, tolerance / 2);
        tokens = Measure();
        for (var step = 0; step < MaxAdjustments && Math.Abs(target - tokens) > aim; step++)
        {
            var gap = target - tokens;
            if (gap > 0)
            {
                Grow(writer, exchanges, gap);
            }
            else if (!Shrink(exchanges, -gap))
            {
                break;
            }

            tokens = Measure();
        }

        if (Math.Abs(target - tokens) > tolerance)
        {
            throw new InvalidOperationException($"could not fit a context to {target} tokens (got {tokens})");
        }

        return (Turns(exchanges), tokens);
    }

    private void Grow(ContextWriter writer, List<Exchange> exchanges, int gap)
    {
        if (exchanges.Count == 0 || gap > 60)
        {
            exchanges.Add(writer.Next());
            return;
        }

        // The candidate whose length is closest to the gap, among a few generic sentences and every short filler.
        var candidates = new List<(string Text, int Tokens)>();
        if (gap > 8)
        {
            for (var i = 0; i < 6; i++)
            {
                var s = writer.GenericSentence();
                candidates.Add((s, counter.Estimate(s)));
            }
        }

        candidates.AddRange(writer.ShortFillers().Select(s => (s, counter.Estimate(s))));
        var best = candidates.MinBy(c => Math.Abs(c.Tokens - gap));
        var last = exchanges[^1];
        last.Assistant.Add(new Sentence(best.Text, true));
    }

    private bool Shrink(List<Exchange> exchanges, int excess)
    {
        var options = new List<(int Exchange, int Sentence, int Tokens)>();
        for (var e = 0; e < exchanges.Count; e++)
        {
            var ex = exchanges[e];
            for (var s = 0; s < ex.Assistant.Count; s++)
            {
                if (ex.Assistant[s].Removable && ex.Assistant.Count > 1)
                {
                    options.Add((e, s, counter.Estimate(ex.Assistant[s].Text)));
                }
            }

            if (!ex.Locked)
            {
                options.Add((e, -1, TurnOverhead + counter.Estimate(ex.User) + ex.Assistant.Sum(x => counter.Estimate(x.Text))));
            }
        }

        if (options.Count == 0)
        {
            return false;
        }

        // Prefer removals that do not overshoot by more than they fix.
        var best = options.MinBy(o => Math.Abs(o.Tokens - excess) + (o.Tokens > 2 * excess ? 1000 : 0));
        if (best.Sentence < 0)
        {
            exchanges.RemoveAt(best.Exchange);
        }
        else
        {
            exchanges[best.Exchange].Assistant.RemoveAt(best.Sentence);
        }

        return true;
    }

    private static List<ContextTurn> Turns(List<Exchange> exchanges)
    {
        var turns = new List<ContextTurn>(exchanges.Count * 2);
        foreach (var e in exchanges)
        {
            turns.Add(new ContextTurn("user", e.User));
            turns.Add(new ContextTurn("assistant", e.AssistantText));
        }

        return turns;
    }
}
