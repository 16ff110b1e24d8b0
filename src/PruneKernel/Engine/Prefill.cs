using PruneKernel.Language;
using PruneKernel.Models.Llava;
using PruneKernel.Pruning;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Engine;

/// <summary>
/// The prompt pass: embedding the prompt's tokens and images and running them through the decoder into a sequence's
/// caches, whole or one chunk at a time, starting after a cached prefix when one was loaded. The pruning seam is the
/// decoder's token selector, as in a cold pass.
/// </summary>
internal static class Prefill
{
    /// <summary>
    /// Runs prompt positions [<paramref name="from"/>, <paramref name="to"/>) through the decoder (the caches already
    /// hold everything before <paramref name="from"/>), with <paramref name="imageRows"/> the embeddings of the image
    /// tokens among them, in order. Returns the final normed states of the rows that reached the last layer.
    /// </summary>
    public static Tensor Run(LlavaForConditionalGeneration model, LvlmPrompt prompt, int from, int to, Tensor? imageRows,
        DecoderCache cache, IDecoderTokenSelector? selector)
    {
        using var scope = NewDisposeScope();
        var ids = torch.tensor(prompt.InputIds.Skip(from).Take(to - from).Select(i => (long)i).ToArray(), dtype: ScalarType.Int64).unsqueeze(0);
        var positions = torch.arange(from, to, dtype: ScalarType.Int64, device: model.Device).unsqueeze(0);
        return model.language_model.forward(model.EmbedPrompt(ids, imageRows), positions, cache, selector: selector).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Embeddings [1, n, D] of the image tokens in prompt positions [<paramref name="from"/>, <paramref name="to"/>), in
    /// order (an image cut by a chunk boundary contributes its rows inside the range), or null when there are none.
    /// </summary>
    public static Tensor? EncodeImagesFrom(LlavaForConditionalGeneration model, LvlmPrompt prompt, int from, int to, IImageFeatureCache? cache, string modelIdentity)
    {
        var inRange = Enumerable.Range(0, prompt.ImageSpans.Count)
            .Where(i => prompt.ImageSpans[i].Start < to && prompt.ImageSpans[i].Start + prompt.ImageSpans[i].Length > from).ToArray();
        if (inRange.Length == 0)
        {
            return null;
        }

        using var scope = NewDisposeScope();
        if (cache is null && inRange.Length == prompt.Images.Count && from <= prompt.ImageSpans[0].Start
            && to >= prompt.ImageSpans[^1].Start + prompt.ImageSpans[^1].Length && !prompt.Images.Any(p => p.OriginalSize is not null || p.IsVideo))
        {
            // Every image whole and single-tile, nothing cached: one pass of the vision tower for all of them.
            using var highRes = prompt.HighResPixelTensor();
            var batch = model.EncodeImages(prompt.PixelTensor(), highRes);
            return batch.reshape(1, -1, batch.shape[^1]).MoveToOuterDisposeScope();
        }

        var parts = new List<Tensor>();
        foreach (var i in inRange)
        {
            var (start, length) = prompt.ImageSpans[i];
            int a = Math.Max(start, from), b = Math.Min(start + length, to);
            var features = EncodeImage(model, prompt, i, cache, modelIdentity, out var owned);
            var rows = features.narrow(1, a - start, b - a);
            parts.Add(owned ? rows : rows.clone());
        }

        return torch.cat(parts, 1).MoveToOuterDisposeScope();
    }

    /// <summary>Image embeddings [1, all image tokens, D] for the prompt's images, in order, from the cache where possible.</summary>
    internal static Tensor? EncodeImages(LlavaForConditionalGeneration model, LvlmPrompt prompt, IImageFeatureCache? cache, string modelIdentity) =>
        EncodeImagesFrom(model, prompt, 0, prompt.InputIds.Count, cache, modelIdentity);

    /// <summary>One image's embeddings [1, tokens, D]; <paramref name="owned"/> says whether the caller owns them (not cached).</summary>
    private static Tensor EncodeImage(LlavaForConditionalGeneration model, LvlmPrompt prompt, int index, IImageFeatureCache? cache, string modelIdentity, out bool owned)
    {
        var key = cache is null ? null : ImageFeatureKeys.For(modelIdentity, prompt.Images[index]);
        if (cache is not null && cache.TryGet(key!, out var cached))
        {
            owned = false;
            return cached;
        }

        using var single = prompt.PixelTensor(index);
        using var singleHighRes = prompt.HighResPixelTensor(index);
        var image = prompt.Images[index];
        var features = image.IsVideo ? model.EncodeVideo(single) : model.EncodeImage(single, image.OriginalSize, singleHighRes);
        if (cache is null)
        {
            owned = true;
            return features;
        }

        features = features.DetachFromDisposeScope();
        cache.Set(key!, features, features.NumberOfElements * features.ElementSize);
        owned = false;
        return features;
    }

    /// <summary>
    /// A prefix-cache entry of a finished sequence: copies of each layer's rows for the prompt and the output tokens fed
    /// back, and for pruned passes the original positions each layer holds.
    /// </summary>
    public static PrefixEntry Snapshot(Sequence s)
    {
        var cache = s.Cache!;
        var promptLength = s.Prompt.InputIds.Count;
        var length = promptLength + s.Fed;
        var ids = s.Prompt.InputIds.Concat(s.Output.Take(s.Fed)).ToArray();
        var key = s.Key!.Extend(ids);
        var layers = cache.Layers.Length;
        var keys = new Tensor[layers];
        var values = new Tensor[layers];
        int[][]? positions = s.Pruned ? new int[layers][] : null;
        using var scope = NewDisposeScope();
        for (var layer = 0; layer < layers; layer++)
        {
            var (k, v) = cache.Layers[layer].Rows(cache.Layers[layer].Length);
            keys[layer] = k.clone().DetachFromDisposeScope();
            values[layer] = v.clone().DetachFromDisposeScope();
            if (positions is not null)
            {
                var prompt = s.Pruner!.PositionsSeenBy(layer);
                positions[layer] = [.. prompt, .. Enumerable.Range(promptLength, s.Fed)];
                if (positions[layer].Length != k.shape[0])
                {
                    throw new InvalidOperationException($"Layer {layer} caches {k.shape[0]} rows but {positions[layer].Length} positions are known.");
                }
            }
        }

        return new PrefixEntry(key, length, keys, values, positions, s.ConversationId);
    }
}
