using PruneKernel.Pruning;
using PruneKernel.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel;

/// <summary>A tokenized prompt with its preprocessed images, ready for generation.</summary>
public sealed class LvlmPrompt
{
    internal LvlmPrompt(string text, IReadOnlyList<int> inputIds, IReadOnlyList<PixelValues> images, double preprocessMs, PromptLayout layout,
        IReadOnlyList<(int Start, int Length)> imageSpans)
    {
        Layout = layout;
        ImageSpans = imageSpans;
        Text = text;
        InputIds = inputIds;
        Images = images;
        PreprocessMs = preprocessMs;
    }

    /// <summary>The prompt text, with one image placeholder per image.</summary>
    public string Text { get; }

    /// <summary>Token ids with every image placeholder expanded to the model's image-token count.</summary>
    public IReadOnlyList<int> InputIds { get; }

    /// <summary>Preprocessed images, in prompt order.</summary>
    public IReadOnlyList<PixelValues> Images { get; }

    /// <summary>Time spent preprocessing the images.</summary>
    public double PreprocessMs { get; }

    /// <summary>Image positions and protected spans, for context pruning.</summary>
    internal PromptLayout Layout { get; }

    /// <summary>Where each image's (or video's) tokens are in <see cref="InputIds"/>, in the order of <see cref="Images"/>.</summary>
    internal IReadOnlyList<(int Start, int Length)> ImageSpans { get; }

    /// <summary>Stacks single-tile images into one [N, C, H, W] float32 CPU tensor.</summary>
    internal Tensor PixelTensor()
    {
        if (Images.Any(p => p.Tiles != 1))
        {
            throw new InvalidOperationException("Tiled (anyres) images are encoded one at a time.");
        }

        using var scope = NewDisposeScope();
        var each = Images.Select(p => torch.tensor(p.Data, [p.Channels, p.Height, p.Width], ScalarType.Float32)).ToArray();
        return torch.stack(each).MoveToOuterDisposeScope();
    }

    /// <summary>The images' high-resolution versions stacked into [N, C, S, S] (DeepSeek-VL hybrid), or null for other families.</summary>
    internal Tensor? HighResPixelTensor()
    {
        if (Images.Count == 0 || Images.Any(p => p.HighRes is null))
        {
            return null;
        }

        using var scope = NewDisposeScope();
        var each = Images.Select(p => p.HighRes!).Select(p => torch.tensor(p.Data, [p.Channels, p.Height, p.Width], ScalarType.Float32)).ToArray();
        return torch.stack(each).MoveToOuterDisposeScope();
    }

    /// <summary>One image's high-resolution version as [1, C, S, S] (DeepSeek-VL hybrid), or null.</summary>
    internal Tensor? HighResPixelTensor(int index) =>
        Images[index].HighRes is { } p ? torch.tensor(p.Data, [1, p.Channels, p.Height, p.Width], ScalarType.Float32) : null;

    /// <summary>One image as a [tiles, C, H, W] float32 CPU tensor (one tile for LLaVA-1.5).</summary>
    internal Tensor PixelTensor(int index)
    {
        var p = Images[index];
        return torch.tensor(p.Data, [p.Tiles, p.Channels, p.Height, p.Width], ScalarType.Float32);
    }
}
