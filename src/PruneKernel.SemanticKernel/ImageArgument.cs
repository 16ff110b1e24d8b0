using Microsoft.Extensions.AI;

namespace PruneKernel.SemanticKernel;

/// <summary>Reads a kernel-function image argument: path, file or http(s) URI, data URI, or base64.</summary>
internal static class ImageArgument
{
    public static async Task<AIContent> LoadAsync(string image, CancellationToken cancellationToken)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(image);
        var value = image.Trim();
        if (value.StartsWith("data:", StringComparison.OrdinalIgnoreCase))
        {
            return new DataContent(value);
        }

        if (Uri.TryCreate(value, UriKind.Absolute, out var uri) && uri.Scheme is "http" or "https")
        {
            return new UriContent(uri, "image/*");
        }

        var path = uri is { IsFile: true } ? uri.LocalPath : value;
        if (File.Exists(path))
        {
            return new DataContent(await File.ReadAllBytesAsync(path, cancellationToken).ConfigureAwait(false), "application/octet-stream") { Name = path };
        }

        var buffer = new byte[value.Length];
        if (Convert.TryFromBase64String(value, buffer, out var written) && written > 0)
        {
            return new DataContent(buffer.AsMemory(0, written), "application/octet-stream");
        }

        throw new ArgumentException($"The image '{Shorten(value)}' is neither an existing file, a URI, a data URI nor base64.", nameof(image));
    }

    private static string Shorten(string value) => value.Length <= 80 ? value : value[..80] + "...";
}
