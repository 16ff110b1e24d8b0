namespace PruneKernel.Evaluation.Reports;

/// <summary>
/// How a report names the files it was made from. Reports are committed and shared, so they must not carry the absolute
/// paths of the machine they ran on (a GPU machine's /tmp, one developer's home): a path inside the base directory is
/// written relative to it, anything else by its last component (a model's folder name, a data file's name).
/// </summary>
public static class ReportPaths
{
    /// <summary>
    /// The directory report paths are relative to: the root of the git repository (or worktree) containing
    /// <paramref name="directory"/>, found by its <c>.git</c> entry (a folder, or a file in a worktree), else
    /// <paramref name="directory"/> itself.
    /// </summary>
    public static string BaseFor(string directory)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        var start = new DirectoryInfo(Path.GetFullPath(directory));
        for (var dir = start; dir is not null; dir = dir.Parent)
        {
            var marker = Path.Combine(dir.FullName, ".git");
            if (Directory.Exists(marker) || File.Exists(marker))
            {
                return dir.FullName;
            }
        }

        return start.FullName;
    }

    /// <summary>
    /// <paramref name="path"/> as a report shows it: relative to <paramref name="baseDirectory"/> (default: the repository
    /// root of the current directory, <see cref="BaseFor"/>) with '/' separators when it lies below it, else its last
    /// component.
    /// </summary>
    public static string Display(string path, string? baseDirectory = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));
        var root = Path.TrimEndingDirectorySeparator(Path.GetFullPath(baseDirectory ?? BaseFor(Environment.CurrentDirectory)));
        var relative = Path.GetRelativePath(root, full);
        var outside = relative == "." || relative == ".." || Path.IsPathRooted(relative)
            || relative.StartsWith(".." + Path.DirectorySeparatorChar, StringComparison.Ordinal)
            || relative.StartsWith(".." + Path.AltDirectorySeparatorChar, StringComparison.Ordinal);
        return outside ? Path.GetFileName(full) : relative.Replace(Path.DirectorySeparatorChar, '/');
    }
}
