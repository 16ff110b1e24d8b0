using System.Diagnostics;
using PruneKernel.Language;
using PruneKernel.Models.Llava;
using PruneKernel.Pruning;
using PruneKernel.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Generation;

/// <summary>Prefill, then one token at a time with the KV cache, until EOS, a stop sequence or the budget.</summary>
internal static class LlavaGenerator
{
    public static IEnumerable<GenerationUpdate> Run(
        LlavaForConditionalGeneration model,
        LlamaTextTokenizer tokenizer,
        LvlmPrompt prompt,
        GenerationOptions options,
        GenerationDefaults defaults,
        IImageFeatureCache? imageCache,
        string modelIdentity,
        CancellationToken cancellationToken)
    {
        options.Validate();
        var maxNew = options.MaxNewTokens ?? defaults.MaxNewTokens;
        var promptLength = prompt.InputIds.Count;
        var context = model.Config.Text.MaxPositionEmbeddings;
        // In long: a budget near int.MaxValue must be refused, not wrap around and pass.
        if ((long)promptLength + maxNew > context)
        {
            throw new ContextLengthExceededException(promptLength, maxNew, context);
        }

        var pruning = options.Pruning is { Enabled: true } p ? p : null;
        pruning?.Validate(model.Config.Text.NumHiddenLayers);
        var pruner = pruning is null ? null : new ContextPruner(pruning, prompt.Layout);
        var temperature = options.Temperature ?? (defaults.DoSample ? defaults.Temperature : 0f);
        using var sampler = new Sampler(temperature, options.TopK ?? defaults.TopK, options.TopP ?? defaults.TopP, options.Seed);
        var eos = defaults.EosTokenIds.ToHashSet();
        var stops = new StopSequenceFilter(options.StopSequences);
        var text = tokenizer.CreateStreamDecoder();
        var output = new List<int>();
        var total = Stopwatch.StartNew();
        using var cache = new DecoderCache(model.Config.Text.NumHiddenLayers, maxNew);

        cancellationToken.ThrowIfCancellationRequested();
        var watch = Stopwatch.StartNew();
        int next;
        double encodeMs, prefillMs;
        // Grad mode and dispose scopes are per thread, and an iterator may resume on another thread: each block sets its own.
        using (torch.no_grad())
        using (var scope = NewDisposeScope())
        {
            var images = EncodeImages(model, prompt, imageCache, modelIdentity);

            encodeMs = watch.Elapsed.TotalMilliseconds;
            watch.Restart();
            var hidden = model.ForwardPrompt(prompt.InputIds, images, cache, pruner);
            // The last prompt token is protected, so it is the last row whatever was pruned.
            var logits = model.Logits(hidden.narrow(1, hidden.shape[1] - 1, 1))[0, 0];
            next = maxNew == 0 ? -1 : sampler.Next(logits);
            prefillMs = watch.Elapsed.TotalMilliseconds;
        }

        watch.Restart();
        var finish = GenerationFinishReason.Length;
        for (var step = 0; step < maxNew; step++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            if (eos.Contains(next))
            {
                finish = GenerationFinishReason.EndOfSequence;
                break;
            }

            output.Add(next);
            var delta = stops.Push(text.Append(next));
            if (stops.Stopped)
            {
                finish = GenerationFinishReason.StopSequence;
                yield return new GenerationUpdate(next, delta);
                break;
            }

            if (step == maxNew - 1)
            {
                yield return new GenerationUpdate(next, delta);
                break;
            }

            using (torch.no_grad())
            using (var scope = NewDisposeScope())
            {
                // The position keeps counting from the prompt's original length, whatever pruning did to the caches.
                var ids = torch.tensor(new long[] { next }, dtype: ScalarType.Int64).unsqueeze(0);
                var embeds = model.EmbedTokens(ids);
                var positions = torch.full([1, 1], promptLength + step, ScalarType.Int64, model.Device);
                var hidden = model.language_model.forward(embeds, positions, cache);
                next = sampler.Next(model.Logits(hidden)[0, 0]);
            }

            yield return new GenerationUpdate(output[^1], delta);
        }

        var tail = stops.Flush();
        var result = new GenerationResult
        {
            PromptTokenCount = promptLength,
            OutputTokenIds = output,
            Text = stops.Text,
            FinishReason = finish,
            Pruning = pruner?.Report(),
            Timings = new GenerationTimings
            {
                ImagePreprocessMs = prompt.PreprocessMs,
                ImageEncodeMs = encodeMs,
                PrefillMs = prefillMs,
                DecodeMs = watch.Elapsed.TotalMilliseconds,
                TotalMs = total.Elapsed.TotalMilliseconds + prompt.PreprocessMs,
            },
        };
        yield return new GenerationUpdate(output.Count > 0 ? output[^1] : -1, tail) { Result = result };
    }

    /// <summary>Image embeddings [1, all image tokens, D] for the prompt's images, in order, from the cache where possible.</summary>
    internal static Tensor? EncodeImages(LlavaForConditionalGeneration model, LvlmPrompt prompt, IImageFeatureCache? cache, string modelIdentity)
    {
        if (prompt.Images.Count == 0)
        {
            return null;
        }

        var tiled = prompt.Images.Any(p => p.OriginalSize is not null || p.IsVideo);
        if (cache is null && !tiled)
        {
            // Single-tile images go through the vision tower together.
            using var highRes = prompt.HighResPixelTensor();
            var batch = model.EncodeImages(prompt.PixelTensor(), highRes);
            return batch.reshape(1, -1, batch.shape[^1]);
        }

        var each = new List<Tensor>();
        for (var i = 0; i < prompt.Images.Count; i++)
        {
            var key = ImageFeatureKeys.For(modelIdentity, prompt.Images[i]);
            if (cache is null || !cache.TryGet(key, out var features))
            {
                using var single = prompt.PixelTensor(i);
                using var singleHighRes = prompt.HighResPixelTensor(i);
                features = prompt.Images[i].IsVideo ? model.EncodeVideo(single) : model.EncodeImage(single, prompt.Images[i].OriginalSize, singleHighRes);
                if (cache is not null)
                {
                    features = features.DetachFromDisposeScope();
                    cache.Set(key, features, features.NumberOfElements * features.ElementSize);
                }
            }

            each.Add(features);
        }

        return torch.cat(each, 1);
    }
}
