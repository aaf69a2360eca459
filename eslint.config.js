// ESLint for the TypeScript of all three packages (typescript-eslint's
// recommended rules), plus the one rule that keeps the architecture honest:
// the host and the guest share code only through @vmsubst/common.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

const boundary = (message, group) => ({
  'no-restricted-imports': ['error', { patterns: [{ group, message }] }],
});

export default tseslint.config(
  { ignores: ['build/**', 'common/dist/**', 'node_modules/**', '**/node_modules/**', 'agent/build/**', 'host-signal/build/**', '.cache/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    rules: {
      // TypeScript itself reports undefined names, with the types in view.
      'no-undef': 'off',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
    },
  },
  {
    // Node scripts; TypeScript reports undefined names in the .ts files.
    files: ['**/*.mjs', '**/*.js'],
    rules: { 'no-undef': 'off' },
  },
  {
    // Tests read JSON documents loosely.
    files: ['test/**/*.ts'],
    rules: { '@typescript-eslint/no-explicit-any': 'off' },
  },
  {
    files: ['agent/src/**/*.ts'],
    rules: boundary('the agent shares code with the host only through @vmsubst/common', ['**/host-signal/**']),
  },
  {
    files: ['host-signal/src/**/*.ts'],
    rules: boundary('host-signal shares code with the agent only through @vmsubst/common', ['**/agent/**']),
  },
  {
    files: ['common/src/**/*.ts'],
    rules: boundary('the contract package depends on neither side', ['**/agent/**', '**/host-signal/**', '@vmsubst/common/**']),
  },
);
