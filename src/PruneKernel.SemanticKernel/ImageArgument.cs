using Microsoft.Extensions.AI;
using PruneKernel.Vision;

namespace PruneKernel.SemanticKernel;

/// <summary>
/// Reads a kernel-function image argument: path, file or http(s) URI, data URI, or base64. Paths become file URIs for the
/// chat client, so its <c>AllowedImageFolders</c> decide what may be read: the argument usually comes from a language
/// model, which a prompt injection can steer to any path.
/// </summary>
internal static class ImageArgument
{
    public static Task<AIContent> LoadAsync(string image, CancellationToken cancellationToken)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(image);
        cancellationToken.ThrowIfCancellationRequested();
        var value = image.Trim();
        if (value.StartsWith("data:", StringComparison.OrdinalIgnoreCase))
        {
            return Task.FromResult<AIContent>(new DataContent(value));
        }

        if (Uri.TryCreate(value, UriKind.Absolute, out var uri) && uri.Scheme is "http" or "https" or "file")
        {
            return Task.FromResult<AIContent>(new UriContent(uri, "image/*"));
        }

        // Base64 of an image first (JPEG's starts with "/9j/", which also looks like a path); the file system is never
        // consulted here, so the answer does not depend on whether some file exists.
        var buffer = new byte[value.Length];
        if (Convert.TryFromBase64String(value, buffer, out var written) && written > 0 && ImageDecoder.SniffMediaType(buffer.AsSpan(0, written)) is not null)
        {
            return Task.FromResult<AIContent>(new DataContent(buffer.AsMemory(0, written), "application/octet-stream"));
        }

        try
        {
            return Task.FromResult<AIContent>(new UriContent(new Uri(Path.GetFullPath(value)), "image/*"));
        }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException or UriFormatException)
        {
            throw new ArgumentException($"The image '{Shorten(value)}' is neither a path, a URI, a data URI nor base64 image bytes.", nameof(image), e);
        }
    }

    private static string Shorten(string value) => value.Length <= 80 ? value : value[..80] + "...";
}
