using Microsoft.Extensions.AI;

namespace PruneKernel.Extensions.AI;

/// <summary>
/// A video given as its frames, in order (LLaVA-NeXT-Video): each frame an image content that <see cref="LvlmChatClient"/>
/// accepts as an image (<see cref="DataContent"/>, or <see cref="UriContent"/> under the same rules). PruneKernel does not
/// decode video files; sample the frames first (LLaVA-NeXT-Video was trained on 8 to 32 evenly spaced frames).
/// </summary>
public sealed class VideoFramesContent : AIContent
{
    /// <summary>Creates the content from its frames.</summary>
    /// <param name="frames">The frames, in order; at least one.</param>
    /// <exception cref="ArgumentException">No frames, or a frame that is not image data or a URI.</exception>
    public VideoFramesContent(IEnumerable<AIContent> frames)
    {
        ArgumentNullException.ThrowIfNull(frames);
        Frames = [.. frames];
        if (Frames.Count == 0)
        {
            throw new ArgumentException("A video needs at least one frame.", nameof(frames));
        }

        if (Frames.FirstOrDefault(f => f is not (DataContent or UriContent)) is { } other)
        {
            throw new ArgumentException($"Frames must be DataContent or UriContent images, not {other.GetType().Name}.", nameof(frames));
        }
    }

    /// <summary>The frames, in order.</summary>
    public IReadOnlyList<AIContent> Frames { get; }
}
