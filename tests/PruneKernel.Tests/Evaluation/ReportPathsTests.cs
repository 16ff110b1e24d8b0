using PruneKernel.Evaluation.Reports;

namespace PruneKernel.Tests.Evaluation;

/// <summary>Reports name their model and data without the absolute paths of the machine they ran on.</summary>
public sealed class ReportPathsTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("pk-paths-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void APathInsideTheBaseIsRelativeWithForwardSlashes()
    {
        var root = Path.Combine(_dir, "repo");
        Assert.Equal("models/demo-llava-tiny", ReportPaths.Display(Path.Combine(root, "models", "demo-llava-tiny"), root));
        Assert.Equal("models/demo-llava-tiny", ReportPaths.Display(Path.Combine(root, "models", "demo-llava-tiny") + Path.DirectorySeparatorChar, root + Path.DirectorySeparatorChar));
        Assert.Equal("data/test.jsonl", ReportPaths.Display(Path.Combine(root, "models", "..", "data", "test.jsonl"), root));
        // A folder whose name merely starts with two dots is still inside.
        Assert.Equal("..cache/m", ReportPaths.Display(Path.Combine(root, "..cache", "m"), root));
    }

    [Fact]
    public void APathOutsideTheBaseShowsOnlyItsName()
    {
        var root = Path.Combine(_dir, "repo");
        Assert.Equal("demo-llava-tiny", ReportPaths.Display(Path.Combine(_dir, "elsewhere", "demo-llava-tiny"), root));
        Assert.Equal("test.jsonl", ReportPaths.Display(Path.Combine(_dir, "eval", "data", "test.jsonl"), root));
        // A sibling that shares the base's name as a prefix is outside, and so is the base itself.
        Assert.Equal("m", ReportPaths.Display(Path.Combine(_dir, "repo2", "m"), root));
        Assert.Equal("repo", ReportPaths.Display(root, root));
        Assert.Equal("x.jsonl", ReportPaths.Display(Path.Combine(Path.GetPathRoot(_dir)!, "x.jsonl"), root));
    }

    [Fact]
    public void TheBaseIsTheRepositoryRootFoundByItsGitEntryOrElseTheDirectoryItself()
    {
        var repo = Directory.CreateDirectory(Path.Combine(_dir, "repo")).FullName;
        var deep = Directory.CreateDirectory(Path.Combine(repo, "src", "deeper")).FullName;
        Assert.Equal(deep, ReportPaths.BaseFor(deep));

        Directory.CreateDirectory(Path.Combine(repo, ".git"));
        Assert.Equal(repo, ReportPaths.BaseFor(deep));
        Assert.Equal(repo, ReportPaths.BaseFor(repo));

        // A worktree marks its root with a .git file.
        var worktree = Directory.CreateDirectory(Path.Combine(_dir, "wt")).FullName;
        File.WriteAllText(Path.Combine(worktree, ".git"), "gitdir: ../repo/.git/worktrees/wt\n");
        Assert.Equal(worktree, ReportPaths.BaseFor(Directory.CreateDirectory(Path.Combine(worktree, "docs")).FullName));
    }
}
